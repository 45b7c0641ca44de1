"""How a run that did not finish is told: one line that says what failed (the rank whose
node or process went first, the others' errors as its consequences), what was kept and
how to go on (`--resume` when an intact checkpoint exists), never a traceback per rank
and retry.
"""

from __future__ import annotations

from ld4mrec_dist.config import Config
from ld4mrec_dist.run_dir import RunDir
from ld4mrec_dist.train.checkpoint import checkpoint_names, newest_intact_checkpoint
from ld4mrec_dist.train.node_loss import (
    Blame,
    NodeLostError,
    blame,
    cluster_nodes,
    failures_of,
    first_line,
    read_placements,
)
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
    """One line: what failed (the rank whose node or process went first; the others'
    errors as its consequences), what was kept and how to go on."""
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    cause = getattr(err, "controller_failure", None)
    if isinstance(err, ControllerError) and isinstance(cause, WorkerGroupStartupTimeoutError):
        lost = attempt_blame({}, set(), run_dir)  # a growing cluster that did not replace a lost node
        if not lost.lost_nodes:
            return start_timeout_message(cfg)
        return f"{start_timeout_message(cfg)}; before that, {lost.line()}; {kept_and_next(run_dir)}"
    if isinstance(cause, NodeLostError):
        what = (f"{attempt_blame(cause.failures, cause.died, run_dir).line()}; the live nodes cannot hold the workers "
                f"({cause.missing}) and none came back within {cfg.scaling.lost_node_wait_s:g}s "
                "(scaling.lost_node_wait_s)")
        return f"training failed: {what}; {kept_and_next(run_dir, 'once the cluster has the nodes again ')}"
    from ld4mrec_dist.train.failure_policy import disk_failure

    disk = disk_failure(err)
    if disk is not None:
        return f"training failed: {first_line(disk)} (a disk error: not retried, a restart would fail the same way)"
    if hasattr(err, "worker_failures"):
        what = attempt_blame(*failures_of(err.worker_failures or {}), run_dir).line()
    else:
        what = first_line(cause or err)
    tries = f"{cfg.scaling.max_failures} restart(s) (scaling.max_failures) used up"
    return f"training failed: {what}; {tries}; {kept_and_next(run_dir)}"


def attempt_blame(failures: dict[int, str], died: set[int], run_dir: RunDir) -> Blame:
    """The cause of the last attempt's failure, its nodes asked now (a lost one is named by
    its id and raylet address)."""
    placements = read_placements(run_dir)
    try:
        nodes = cluster_nodes(probe=set(placements.values()))
    except Exception:  # noqa: BLE001 - no cluster to ask any more: blame from the errors alone
        nodes = {}
    return blame(failures, died, placements, nodes)


def kept_and_next(run_dir: RunDir, when: str = "") -> str:
    """What a failed run kept (the checkpoint `--resume` starts from) and the command."""
    point = newest_intact_checkpoint(run_dir)
    if point is None:
        return "no intact checkpoint was kept, start the run again"
    return f"kept: {point.name} (epoch {point.epoch}); continue {when}with: {resume_command(run_dir)}"


def start_timeout_message(cfg: Config) -> str:
    total, free = cluster_cpu_gpu("total"), cluster_cpu_gpu("free")
    return (f"the worker group did not start: it waited {start_timeout_s(cfg):g}s per attempt "
            f"({cfg.scaling.max_failures + 1} attempt(s)) for {rank_count(cfg)} workers × "
            f"{format_resources(worker_resources(cfg))}; the cluster has {format_resources(total)}, free now "
            f"{format_resources(free)} (the rest is held by other jobs or leftover placement groups: "
            "`ray list placement-groups`). Free them, lower scaling.num_workers / "
            "scaling.cpus_per_worker, or raise scaling.wait_for_resources_s on a cluster that is growing")
