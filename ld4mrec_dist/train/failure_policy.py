"""Which worker failures are worth a restart: not a disk error.

Ray Train restarts the worker group after any worker error, up to `scaling.max_failures`
times. A full disk, a read-only `run.storage` or a missing permission fail the same way on
every restart, so those restarts only add minutes and log lines: a run whose worker failed
on such an error ends at once, with that error's one line.
"""

from __future__ import annotations

import errno
from typing import Any

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision
from ray.train.v2.api.exceptions import WorkerGroupError

from data_pipeline.errors import DiskError
from data_pipeline.storage import DISK_ERRNOS

DISK_ERROR_TEXTS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied")


def is_disk_error(err: BaseException) -> bool:
    """A write refused for space or permission (ours, an OSError's errno, or a wrapped one's text)."""
    if isinstance(err, DiskError):
        return True
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS and err.errno != errno.EPERM:
        return True
    return any(text in str(err) for text in DISK_ERROR_TEXTS)


def disk_failure(err: BaseException) -> BaseException | None:
    """The disk error among a failed worker group's errors, if any."""
    failures = getattr(err, "worker_failures", None) or {}
    return next((e for _, e in sorted(failures.items()) if is_disk_error(e)), None)


class DiskErrorsEndTheRun(DefaultFailurePolicy):
    """Ray Train's default policy, except that a worker's disk error is never retried."""

    def make_decision(self, training_failed_error: Any) -> FailureDecision:
        if isinstance(training_failed_error, WorkerGroupError) and disk_failure(training_failed_error):
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)


class LD4MRecTorchTrainer(TorchTrainer):
    """A TorchTrainer whose controller uses `DiskErrorsEndTheRun` (Ray builds the default one in
    `fit()`; this hands it ours instead, built from the same FailureConfig)."""

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
        # At run time `ray.train.torch.TorchTrainer` is V2's; its static type is V1's.
        config: Any = self.run_config.failure_config
        controller_init_kwargs["failure_policy"] = DiskErrorsEndTheRun(config)
        return super()._initialize_and_run_controller(**controller_init_kwargs)  # type: ignore[misc]
