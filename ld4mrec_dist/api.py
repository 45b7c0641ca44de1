"""The Python entry point: what `jobs/train.py` runs, for notebooks and scripts.

    from ld4mrec_dist.api import train_run
    result = train_run(overrides=["data.path=data/mine-clean", "train.epochs=50"])
    result.run_dir, result.final_metrics["test"]["recall@20"]

Errors are raised as exceptions with the one-line messages the command line prints
(`ConfigError`, `DataError`, `ResourceError`, `TrainingFailed`, …).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline import storage
from ld4mrec_dist.config import Config


@dataclass(frozen=True)
class RunResult:
    run_dir: str
    """Where the run wrote its outputs (config.yaml, metrics.jsonl, best_model.pt, …)."""
    final_metrics: dict[str, Any]
    """final_metrics.json read back: best_epoch, epochs_run, valid and test metrics, wall_time_s."""


def train_run(config: Config | str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
              resume: str | None = None) -> RunResult:
    """Train one run as `jobs/train.py [--config FILE] [--resume RUN_DIR] overrides…` does.

    `config`: a `Config`, or a YAML file (None: the defaults); `overrides`:
    `["section.field=value", …]` or `{"section.field": value}`, applied on top;
    `resume`: a run directory to continue from its newest intact checkpoint."""
    from ld4mrec_dist.cli import config_for
    from ld4mrec_dist.run_dir import FINAL_METRICS_FILE, file_in
    from ld4mrec_dist.train.trainer import run_training

    dotlist = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, dict) else list(overrides or [])
    base = config if isinstance(config, Config) else (str(config) if config else None)
    result = run_training(config_for(base, resume, dotlist))
    final = json.loads(storage.read_text(file_in(result.run_dir, FINAL_METRICS_FILE)))
    return RunResult(str(result.run_dir), final)
