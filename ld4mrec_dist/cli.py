"""What the job scripts share: config loading with clear errors, and the exit codes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from ld4mrec_dist.config import ConfigError, load_config


def config_for(config_path: Optional[str], resume: Optional[str], overrides: list[str]):
    """The run's config: a resumed run's saved config.yaml is the base, unless --config."""
    if resume and not config_path:
        saved = Path(resume).expanduser() / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {resume}: {saved} not found; is this a run directory?")
        config_path = str(saved)
    cfg = load_config(config_path, overrides)
    if resume:
        cfg.run.resume = str(Path(resume).expanduser().resolve())
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
