"""TensorBoard event files in the run directory, written by rank 0 (`tensorboard --logdir runs/`).

PyTorch's own `torch.utils.tensorboard.SummaryWriter` writes them; it needs the
`tensorboard` package (the `tracking` extra). Without it the run says so in one start-up
line and trains as usual. The x axis of every scalar is the global step; per epoch: the
train loss, every valid/test metric, the learning rate, the epoch's timings and throughput;
per step: the loss, the learning rate and the step's wall time, and per epoch the mean time
per step of each timed piece (data, forward, sync, …).

An object-store run directory (s3://, gs://) gets the files written locally and copied
there after each epoch: TensorBoard reads them from a local copy or from the bucket.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

from data_pipeline import storage
from ld4mrec_dist.run_dir import RunDir

TENSORBOARD_MISSING = ("TensorBoard logging is off: the tensorboard package is not installed "
                       "(pip install -e \".[tracking]\")")
# metrics.jsonl keys that are not scalars worth a curve, and the tag of those that are renamed
NOT_LOGGED = {"epoch", "step", "best_epoch"}
TAGS = {"loss": "loss/train", "users_per_s": "throughput/users_per_s", "train_time_s": "time/train_epoch_s",
        "eval_time_s": "time/eval_s", "data_time_s": "time/data_s", "sync_time_s": "time/sync_s"}


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def startup_line(run_dir: RunDir) -> str:
    """The start-up line: where the event files go and the command that shows them, or why none."""
    if not tensorboard_available():
        return f"[ld4mrec] {TENSORBOARD_MISSING}"
    return f"[ld4mrec] TensorBoard: tensorboard --logdir {storage.parent_of(str(run_dir))}"


class Tracker:
    """Rank 0's TensorBoard writer; every method is a no-op on other ranks or without tensorboard."""

    def __init__(self, run_dir: RunDir, enabled: bool, resume_step: int = 0) -> None:
        self.run_dir = str(run_dir)
        self.writer: Any = None
        self.local_dir = ""
        if not enabled or not tensorboard_available():
            return
        from torch.utils.tensorboard import SummaryWriter

        self.local_dir = (tempfile.mkdtemp(prefix="ld4mrec-tb-") if storage.is_uri(self.run_dir)
                          else self.run_dir)
        # purge_step: a resumed run replays the steps after its checkpoint; TensorBoard
        # hides the earlier attempt's events from that step on.
        self.writer = SummaryWriter(self.local_dir, purge_step=resume_step or None)

    def step(self, global_step: int, loss: float | None, lr: float, seconds: float) -> None:
        if self.writer is None:
            return
        if loss is not None:
            self.writer.add_scalar("step/loss", loss, global_step)
        self.writer.add_scalar("step/lr", lr, global_step)
        self.writer.add_scalar("step/time_s", seconds, global_step)

    def pieces(self, global_step: int, totals: dict[str, float], steps: int) -> None:
        """The mean time per step of each timed piece of an epoch (`PieceTimer.total`)."""
        if self.writer is None:
            return
        for piece, total in totals.items():
            self.writer.add_scalar(f"step_time_ms/{piece}", 1000.0 * total / max(steps, 1), global_step)

    def evaluation(self, row: dict[str, Any], lr: float) -> None:
        """One row of metrics.jsonl (every scalar in it) and the learning rate."""
        if self.writer is None:
            return
        at = int(row["step"])
        for key, value in row.items():
            if key not in NOT_LOGGED and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(TAGS.get(key, key), value, at)
        self.writer.add_scalar("epoch", row["epoch"], at)
        self.writer.add_scalar("lr", lr, at)
        self.writer.flush()
        self.copy_to_store()

    def copy_to_store(self) -> None:
        """An object-store run directory: copy the local event files there."""
        if not storage.is_uri(self.run_dir):
            return
        for path in Path(self.local_dir).iterdir():
            storage.write_bytes(storage.join(self.run_dir, path.name), path.read_bytes())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.copy_to_store()
            self.writer = None
