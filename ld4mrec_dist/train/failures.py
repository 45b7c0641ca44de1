"""How a run that did not finish is told: one line that says what failed and how to go on
(`--resume` when a checkpoint exists), never a traceback per rank and retry.
"""

from __future__ import annotations

import re

from ld4mrec_dist.config import Config
from ld4mrec_dist.run_dir import RunDir
from ld4mrec_dist.train.checkpoint import checkpoint_names
from ld4mrec_dist.train.resources import (
    cluster_cpu_gpu,
    format_resources,
    rank_count,
    runs_in_process,
    start_timeout_s,
    worker_resources,
)


class TrainingFailed(RuntimeError):
    """A run that ended in an error, in one line: what failed and how to go on."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: the message says how to resume (or that there is nothing to resume from)."""


def resume_command(run_dir: RunDir) -> str:
    return f"python jobs/train.py --resume {run_dir}"


def interrupted_message(cfg: Config, run_dir: RunDir) -> str:
    if runs_in_process(cfg):
        return (f"interrupted; in-process runs (scaling.num_workers=0) do not checkpoint, so {run_dir} "
                "cannot be resumed: start it again")
    if not checkpoint_names(run_dir):
        return f"interrupted before the first checkpoint of {run_dir}: start the run again"
    return f"interrupted; continue from the latest checkpoint with: {resume_command(run_dir)}"


def failure_message(err: Exception, cfg: Config, run_dir: RunDir) -> str:
    """One line: what failed, and how to go on (`--resume` when a checkpoint exists)."""
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    cause = getattr(err, "controller_failure", None)
    if isinstance(err, ControllerError) and isinstance(cause, WorkerGroupStartupTimeoutError):
        return start_timeout_message(cfg)
    what = worker_failure_summary(err) if hasattr(err, "worker_failures") else first_line(cause or err)
    tries = f"{cfg.scaling.max_failures} restart(s) (scaling.max_failures) used up"
    if checkpoint_names(run_dir):
        return f"training failed: {what}; {tries}; continue from the latest checkpoint with: {resume_command(run_dir)}"
    return f"training failed: {what}; {tries}; no checkpoint was written, start the run again"


def start_timeout_message(cfg: Config) -> str:
    total, free = cluster_cpu_gpu("total"), cluster_cpu_gpu("free")
    return (f"the worker group did not start: it waited {start_timeout_s(cfg):g}s per attempt "
            f"({cfg.scaling.max_failures + 1} attempt(s)) for {rank_count(cfg)} workers × "
            f"{format_resources(worker_resources(cfg))}; the cluster has {format_resources(total)}, free now "
            f"{format_resources(free)} (the rest is held by other jobs or leftover placement groups: "
            "`ray list placement-groups`). Free them, lower scaling.num_workers / "
            "scaling.cpus_per_worker, or raise scaling.wait_for_resources_s on a cluster that is growing")


def first_line(err: BaseException) -> str:
    """An exception in one line: its last `Type: message` line (a worker's error carries its
    traceback), else its first line, cut to 300 characters."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    error_lines = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", line)]
    text = error_lines[-1] if error_lines else lines[0] if lines else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def worker_failure_summary(err: Exception) -> str:
    """The rank that failed first and how; a rank that died takes precedence over the
    collective errors its death caused on the others."""
    failures = getattr(err, "worker_failures", {}) or {}

    def died(e: BaseException) -> bool:  # the process is gone (killed, crashed, OOM), not an exception
        cause = getattr(e, "health_check_failure", e)
        return "ActorDied" in type(cause).__name__ or "actor died" in str(cause).lower()

    ranks = sorted(failures, key=lambda r: (not died(failures[r]), r))
    if not ranks:
        return first_line(err)
    rank = ranks[0]
    what = "died" if died(failures[rank]) else f"raised {first_line(failures[rank])}"
    others = f" (and {len(ranks) - 1} other rank(s) failed with it)" if len(ranks) > 1 else ""
    return f"worker rank {rank} {what}{others}"
