"""The sweep's driver-side guards: outcomes recorded, leaked placement groups removed, stalls as errors.

* `RecordingASHA` is ASHA that writes each of its stop decisions to the trial ledger.
* `SweepGuard` (a Tune callback) records trial starts/ends/errors, removes placement
  groups that a stopped trial's Ray Train controller left behind, and turns a sweep in
  which no trial can start into an error that names the missing resource.

Why the reaper: a trial that Tune stops (ASHA) is an actor that exits; its Ray Train
controller actor dies with it, ungracefully. Ray Train V2 relies on a detached
PlacementGroupCleaner to remove the worker group's placement group then, and that cleaner
queries the State API with no address: with several Ray instances on the host it fails
("Found multiple active Ray instances"), without a dashboard it cannot work at all. A
placement group outlives its creator actor until the job ends, so each stopped trial kept
its workers' CPUs reserved; two 0.5-CPU groups on 2 CPUs left too little for the next
trial (then a Ray Data read task needing a whole CPU) and the sweep waited forever. Any placement group of this job
whose creator actor is dead is such garbage; the driver removes it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from ld4mrec_dist.tune import ledger
from ld4mrec_dist.tune.tune_state import StateRecorder

logger = logging.getLogger(__name__)

REAP_EVERY_S = 2.0
"""How often the driver looks for leaked placement groups while trials run."""


class SweepStalledError(RuntimeError):
    """No trial of the sweep could start (or a trial could not get its resources) in time."""


def _experiment_dir(trial: Any, fallback: Path) -> Path:
    """The sweep directory where Tune has it now (it may have moved since the sweep began)."""
    try:
        return Path(trial.storage.experiment_fs_path)
    except Exception:  # noqa: BLE001 - a trial without storage context: the path given at start
        return fallback


class RecordingASHA(AsyncHyperBandScheduler):
    """ASHA that records which trials it stopped, and at which epoch, in the trial ledger,
    and ranks each trial at a rung by the best metric it has reached so far.

    Plain ASHA compares the metric of the rung's epoch itself. A trial is selected at its
    best valid epoch, and on MovieLens-1M runs peak at epoch 4-5 and then decline until
    patience ends them: at a rung at epoch 8 plain ASHA compares how far each trial has
    already fallen from its peak, and stopped a trial whose best (0.1577) matched the
    completed trial it was compared with (0.1580) because at epoch 8 it read 0.1502
    against 0.1503. The best so far is what the trial would be selected by."""

    def __init__(self, sweep_dir: str | Path, **kwargs: Any):
        super().__init__(**kwargs)
        self.sweep_dir = str(sweep_dir)
        self._best_so_far: dict[str, float] = {}

    def best_so_far(self, trial: Any, result: dict[str, Any]) -> dict[str, Any]:
        """`result` with the metric replaced by the trial's best value up to this report."""
        metric, sign = self._metric, self._metric_op
        value = result.get(metric) if metric else None
        if metric is None or sign is None or not isinstance(value, (int, float)) or value != value:
            return result  # no metric, or absent / NaN in this report: unchanged
        previous = self._best_so_far.get(trial.trial_id)
        if previous is not None and sign * previous > sign * value:
            value = previous
        self._best_so_far[trial.trial_id] = float(value)
        return {**result, metric: value}

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        super().on_trial_complete(tune_controller, trial, self.best_so_far(trial, result))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision: str = super().on_trial_result(tune_controller, trial, self.best_so_far(trial, result))
        if decision == TrialScheduler.STOP and result.get(self._time_attr, 0) >= self._max_t:
            # Its last epoch: the trial ends by itself now. Stopping it would only cut off
            # its final outputs (final_metrics.json) after all the training was done.
            return str(TrialScheduler.CONTINUE)
        if decision == TrialScheduler.STOP:
            ledger.record(_experiment_dir(trial, Path(self.sweep_dir)), trial.trial_id, ledger.STOPPED_BY_ASHA,
                          epoch=result.get(self._time_attr))
        return decision


# ---------------------------------------------------------------- placement groups


def _placement_group_rows() -> list[Any]:
    """Every placement group of the cluster, as GCS table rows (creator actor included).

    `ray.util.placement_group_table()` drops the creator actor's id and liveness, which is
    what tells a leaked group from a live one; the GCS accessor behind it has them."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    table_data = gcs_pb2.PlacementGroupTableData  # type: ignore[attr-defined]
    return [table_data.FromString(raw) for raw in accessor.get_placement_group_table()]


def orphaned_placement_groups(all_actor_groups: bool = False, since_ms: float = 0.0) -> list[Any]:
    """This job's live placement groups created by an actor that is dead (or, with
    `all_actor_groups`, by any actor created since `since_ms`, epoch milliseconds: once
    no trial of the sweep runs, all of those are leftovers)."""
    from ray.core.generated import gcs_pb2

    job = ray.get_runtime_context().get_job_id()
    removed = gcs_pb2.PlacementGroupTableData.REMOVED  # type: ignore[attr-defined]
    return [pg for pg in _placement_group_rows()
            if pg.state != removed and not pg.is_detached and pg.creator_job_id.hex() == job
            and created_by_an_actor(pg.creator_actor_id)
            and (pg.creator_actor_dead or (all_actor_groups and pg.placement_group_creation_timestamp_ms >= since_ms))]


def created_by_an_actor(actor_id: bytes) -> bool:
    """Whether a placement group's creator id names an actor: a driver's (or task's) id is
    ActorID::NilFromJob, 12 bytes of 0xff then the job id (Tune's own trial groups)."""
    unique = actor_id[:-4]
    return bool(unique) and any(b != 0xFF for b in unique)


def remove_orphaned_placement_groups(all_actor_groups: bool = False, since_ms: float = 0.0) -> list[str]:
    """Remove the groups `orphaned_placement_groups` finds; their ids (hex)."""
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = []
    for pg in orphaned_placement_groups(all_actor_groups, since_ms):
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
        except Exception as err:  # noqa: BLE001 - removed meanwhile by its owner or Ray's cleaner
            logger.debug("placement group %s: %s", pg.placement_group_id.hex(), err)
            continue
        removed.append(pg.placement_group_id.hex())
    return removed


def reap(all_actor_groups: bool = False, since_ms: float = 0.0) -> list[str]:
    """`remove_orphaned_placement_groups`, never failing the sweep (the GCS table is a private
    interface of Ray: if it changes, a warning says so and the sweep goes on as before)."""
    try:
        return remove_orphaned_placement_groups(all_actor_groups, since_ms)
    except Exception as err:  # noqa: BLE001
        logger.warning("could not check for leaked placement groups (%s): stopped trials may keep "
                       "their workers' CPUs reserved", err)
        return []


# ---------------------------------------------------------------- resources, in words


def _fmt(resources: dict[str, float]) -> str:
    keys = [k for k in ("CPU", "GPU") if k in resources] + sorted(
        k for k in resources if k not in ("CPU", "GPU") and not k.startswith(("node:", "bundle_group"))
        and k not in ("memory", "object_store_memory") and "_group_" not in k)
    return ", ".join(f"{resources[k]:g} {k}" for k in keys) or "nothing"


def cluster_resources_line() -> str:
    """'free: 0.9 CPU of 2 CPU; held by placement groups: 1 CPU (2 groups)'."""
    try:
        free = ray.available_resources()  # type: ignore[no-untyped-call]
        total = ray.cluster_resources()  # type: ignore[no-untyped-call]
        held: dict[str, float] = {}
        n = 0
        for pg in ray.util.placement_group_table().values():
            if pg.get("state") == "CREATED":
                n += 1
                for bundle in pg.get("bundles", {}).values():
                    for k, v in bundle.items():
                        held[k] = held.get(k, 0.0) + v
        return (f"free: {_fmt(free)} of {_fmt(total)}; held by {n} placement group(s): {_fmt(held)}")
    except Exception as err:  # noqa: BLE001 - only used to word an error
        return f"(cluster resources unavailable: {err})"


# ---------------------------------------------------------------- the callback


class SweepGuard(Callback):
    """Trial ledger, placement-group reaper and stall detector of one sweep (driver side)."""

    def __init__(self, sweep_dir: str | Path, stall_timeout_s: float, trial_request: dict[str, float]):
        self.sweep_dir = str(sweep_dir)
        self.stall_timeout_s = float(stall_timeout_s)
        self.trial_request = dict(trial_request)
        self._last_reap = 0.0
        self._last_progress = time.monotonic()
        self._started_ms = time.time() * 1000.0
        self._state = StateRecorder(self.sweep_dir)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._last_reap = 0.0
        self._last_progress = time.monotonic()
        self._started_ms = time.time() * 1000.0  # a resumed sweep: its own groups only
        self._state = StateRecorder(self.sweep_dir)

    def _record(self, trial: Any, event: str, **detail: Any) -> None:
        ledger.record(_experiment_dir(trial, Path(self.sweep_dir)), trial.trial_id, event, **detail)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._last_progress = time.monotonic()
        self._record(trial, "started")
        values = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in sorted((trial.config or {}).items()))
        print(f"[ld4mrec] trial {trial.trial_id} started: {values}", flush=True)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self._last_progress = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._last_progress = time.monotonic()
        self._record(trial, "terminated")
        epoch = (trial.last_result or {}).get("epoch")
        print(f"[ld4mrec] trial {trial.trial_id} ended" + (f" at epoch {epoch}" if epoch else ""), flush=True)
        self._reap_now()

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._last_progress = time.monotonic()
        try:
            err = trial_error_line(trial.get_pickled_error() or trial.get_error())
        except Exception:  # noqa: BLE001 - the ledger entry matters more than its wording
            err = ""
        self._record(trial, ledger.ERROR, error=err)
        print(f"[ld4mrec] trial {trial.trial_id} failed" + (f": {err}" if err else " (its error: in the summary)"),
              flush=True)
        self._reap_now()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._state.record()  # Tune saved its state (if it did) just before this call
        now = time.monotonic()
        if now - self._last_reap >= REAP_EVERY_S:
            self._reap_now()
        running = [t for t in trials if t.status == "RUNNING"]
        pending = [t for t in trials if t.status == "PENDING"]
        if running or not pending:
            # Stalled means: nothing runs, something waits. Running trials bound their own
            # resource waits (sweep.run_trial).
            self._last_progress = now
            return
        if now - self._last_progress > self.stall_timeout_s:
            raise SweepStalledError(
                f"sweep stalled: for {now - self._last_progress:.0f}s no trial is running and "
                f"{len(pending)} cannot start: a trial needs {_fmt(self.trial_request)} for its driver "
                f"and its workers' placement group; {cluster_resources_line()} "
                f"(raise stall_timeout_s in the sweep file if the cluster is still growing)")

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        # No trial runs any more: every placement group an actor of this job created during
        # the sweep is a leftover (a controller may not have died yet).
        self._reap_now(all_actor_groups=True)
        self._state.record()

    def _reap_now(self, all_actor_groups: bool = False) -> None:
        self._last_reap = time.monotonic()
        removed = reap(all_actor_groups, since_ms=self._started_ms - 1000.0)
        if removed:
            print(f"[ld4mrec] removed {len(removed)} placement group(s) left by stopped trials "
                  f"(their Ray Train controllers had exited)", flush=True)


def _first_line(text: str) -> str:
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def trial_error_line(result_error: BaseException | None) -> str:
    """One line for a trial's error: the innermost cause Tune wrapped (Tune prefixes its own)."""
    if result_error is None:
        return ""
    err: BaseException = result_error
    for _ in range(8):  # RayTaskError keeps the trial's own exception as `cause`
        cause = getattr(err, "cause", None)
        if not isinstance(cause, BaseException) or cause is err:
            break
        err = cause
    return _first_line(f"{type(err).__name__}: {err}")
