"""What the job scripts share: config loading with clear errors, and the exit codes."""

from __future__ import annotations

import sys
from typing import Optional

from data_pipeline import storage
from ld4mrec_dist.config import ConfigError, load_config


def config_for(config_path: Optional[str], resume: Optional[str], overrides: list[str]):
    """The run's config: a resumed run's saved config.yaml is the base, unless --config."""
    if resume and not config_path:
        saved = storage.join(resume, "config.yaml")
        if not storage.is_file(saved):
            raise ConfigError(f"--resume {resume}: {saved} not found; is this a run directory?")
        config_path = saved
    cfg = load_config(config_path, overrides)
    if resume:
        cfg.run.resume = storage.normalize(resume)
    return cfg


def run_cli(config_path: Optional[str], resume: Optional[str], overrides: list[str]) -> int:
    from data_pipeline.errors import DataError
    from ld4mrec_dist.train.checkpoint import CheckpointError
    from ld4mrec_dist.train.trainer import run_training

    try:
        cfg = config_for(config_path, resume, overrides)
        run_training(cfg)
    except (ConfigError, DataError, CheckpointError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
