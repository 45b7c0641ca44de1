"""What the job scripts share: config loading with clear errors, and the exit codes.

Exit codes: 0 done, 2 a one-line error (bad input, resources, a failed run), 130 Ctrl-C.
"""

from __future__ import annotations

import sys

from data_pipeline import storage
from ld4mrec_dist.config import Config, ConfigError, config_to_yaml, load_config
from ld4mrec_dist.run_dir import CONFIG_FILE, check_saved_config, file_in

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(flags and their values, `section.field=value` overrides): overrides may stand
    anywhere, also right after a flag's value or a list flag (`--seeds 1 2 data.path=x`),
    where argparse alone would refuse them or read them as the flag's value."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    return [a for a in argv if a not in overrides], overrides


def config_for(config_path: str | Config | None, resume: str | None, overrides: list[str],
               from_checkpoint: str | None = None) -> Config:
    """The run's config: a resumed run's saved config.yaml is the base, unless --config
    (a YAML file, or a `Config` from Python)."""
    from ld4mrec_dist.run_dir import anchored_path, job_path_help

    if from_checkpoint and not resume:
        raise ConfigError("--from-checkpoint NAME needs --resume RUN_DIR")
    if resume:
        given, resume = resume, anchored_path(resume)  # inside a Ray job: not Ray's temporary working-dir copy
        if not storage.exists(resume):
            if resume != given:
                raise ConfigError(job_path_help("--resume", given, resume, "no such run directory"))
            raise ConfigError(f"--resume {resume}: no such run directory")
    if resume and not config_path:
        saved = file_in(resume, CONFIG_FILE)
        if not storage.is_file(saved):
            raise ConfigError(f"--resume {resume}: {saved} not found; is this a run directory?")
        check_saved_config(resume)  # a bit flip in it would silently change the resumed run
        config_path = saved
    cfg = load_config(config_path, overrides)
    if resume:
        cfg.run.resume = storage.normalize(resume)
    if from_checkpoint:
        cfg.run.from_checkpoint = from_checkpoint
    return cfg


def print_config(config_path: str | None, resume: str | None, overrides: list[str],
                 from_checkpoint: str | None = None) -> int:
    """`--print-config`: the resolved configuration as YAML (what the run would save as
    config.yaml); nothing is prepared or trained."""
    try:
        cfg = config_for(config_path, resume, overrides, from_checkpoint)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    print(config_to_yaml(cfg), end="")
    return 0


def run_cli(config_path: str | None, resume: str | None, overrides: list[str],
            from_checkpoint: str | None = None) -> int:
    from data_pipeline.errors import DataError
    from ld4mrec_dist.train.checkpoint import CheckpointError
    from ld4mrec_dist.train.failures import TrainingFailed, TrainingInterrupted
    from ld4mrec_dist.train.resources import ResourceError
    from ld4mrec_dist.train.trainer import run_training

    try:
        cfg = config_for(config_path, resume, overrides, from_checkpoint)
        run_training(cfg)
    except (ConfigError, DataError, CheckpointError, ResourceError, TrainingFailed,
            FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except TrainingInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\ninterrupted before training started", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
