"""The run directory: the one owner of the name of every file a run writes at its top level.

A run directory is a local folder or an object-store URI (`RunDir`). Ray Train adds its
`checkpoint_*` folders beside these files (their inside belongs to `train/checkpoint.py`).

    config.yaml          the run's full configuration (`--resume` reads it back)
    item_factors.npy     V_k [I, K] of the train matrix, fitted once by the driver
    metrics.jsonl        one row per evaluation, rewritten whole (object stores cannot append)
    best_model.pt        the best valid epoch's weights and what scoring needs
    final_metrics.json   best epoch, its valid/test metrics, wall time (written at the end)
    curves.png           loss and valid/test curves
    .fault_injected      marker of a test-only fault injection (fires once per run)
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline import storage

CONFIG_FILE = "config.yaml"
ITEM_FACTORS_FILE = "item_factors.npy"
METRICS_FILE = "metrics.jsonl"
BEST_MODEL_FILE = "best_model.pt"
FINAL_METRICS_FILE = "final_metrics.json"
CURVES_FILE = "curves.png"
FAULT_MARKER = ".fault_injected"

RunDir = Path | str  # a local directory, or an object-store URI string


def run_location(location: str) -> RunDir:
    """Path for a local location (so callers may use `/`), the URI string otherwise."""
    return location if storage.is_uri(location) else Path(location)


def file_in(run_dir: RunDir, name: str) -> str:
    """The location of one of the run directory's files (a name above)."""
    return storage.join(run_dir, name)


def read_item_factors(run_dir: RunDir) -> np.ndarray:
    """float32 [I, K]: the V_k the driver wrote."""
    return np.load(io.BytesIO(storage.read_bytes(file_in(run_dir, ITEM_FACTORS_FILE))))


def write_item_factors(run_dir: RunDir, v_IK: np.ndarray) -> None:
    storage.write_bytes(file_in(run_dir, ITEM_FACTORS_FILE),
                        storage.bytes_of_npy(np.ascontiguousarray(v_IK, dtype=np.float32)))


def rewrite_metrics(run_dir: RunDir, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl = the loop's history: rows of epochs lost to a failure vanish."""
    storage.write_text(file_in(run_dir, METRICS_FILE), "".join(json.dumps(r) + "\n" for r in history))
