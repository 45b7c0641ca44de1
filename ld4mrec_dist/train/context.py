"""Where a rank runs: in the driver (scaling.num_workers = 0) or as a Ray Train worker.

The loop asks its context for the rank, the world size, the device, the state to resume
from and how to report; it never asks which of the two it runs in.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from data_pipeline import storage
from ld4mrec_dist import dist
from ld4mrec_dist.train.checkpoint import load_checkpoint, save_checkpoint

# Builds a rank 0 checkpoint's state only when one is written.
CheckpointState = Callable[[], dict[str, Any]]


class InProcessWorker:
    """The loop in the driver: one rank, no checkpoints (nothing to resume from but a
    `--from-checkpoint` of a Ray run)."""

    checkpoints = False

    def __init__(self) -> None:
        self.rank, self.world = dist.rank(), dist.world_size()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def saved_state(self) -> dict[str, Any] | None:
        return None

    def report(self, metrics: dict[str, Any], checkpoint: CheckpointState) -> None:
        """Nothing to hand over: rank 0 has written metrics.jsonl and the best model."""


class RayTrainWorker:
    """A Ray Train worker: reports every evaluation, rank 0 with a checkpoint."""

    checkpoints = True

    def __init__(self) -> None:
        import ray.train.torch

        self.rank, self.world = dist.rank(), dist.world_size()
        self.device = ray.train.torch.get_device()

    def saved_state(self) -> dict[str, Any] | None:
        """The latest checkpoint Ray Train hands this attempt (after a restart or a resume)."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return load_checkpoint(d)

    def report(self, metrics: dict[str, Any], checkpoint: CheckpointState) -> None:
        import ray.train

        if self.rank != 0:  # every rank must report; only rank 0 attaches the checkpoint
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, checkpoint())
            try:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            except OSError as err:  # Ray copying it into run.storage: a full or read-only disk is one line
                size = sum(p.stat().st_size for p in Path(tmp).iterdir())
                raise storage.disk_error(f"{run_storage()}/checkpoint_…", err, size) or err from None


def run_storage() -> str:
    """The run directory Ray Train writes this run's checkpoints into (for messages)."""
    import ray.train

    try:
        return str(ray.train.get_context().get_storage().experiment_fs_path)
    except Exception:  # noqa: BLE001 - a message detail only: another Ray version may lack it
        return "the run directory"


WorkerContext = InProcessWorker | RayTrainWorker


def worker_context() -> WorkerContext:
    """The context of the calling process: a Ray Train worker if it is one."""
    try:
        import ray.train

        ray.train.get_context()
    except Exception:  # noqa: BLE001 - not inside a Ray Train worker
        return InProcessWorker()
    return RayTrainWorker()
