"""Run, resume and summarise a sweep on Ray Tune; each trial is a full Ray Train run.

A sweep directory (`<storage>/<name>/`) is Tune's experiment directory plus:

    sweep.yaml          the sweep file as run (what --resume reads back)
    base_config.yaml    the base config every trial starts from (paths as the user gave them)
    trial_base.yaml     the same with absolute paths and run.storage = runs/
    runs/<trial_id>/    each trial's run directory, as `jobs/train.py` leaves one
    trials.csv          one row per trial: its values, best valid metric, test at that epoch
    heatmap_<x>_<y>.png one per pair of grid keys (paper Figs. 4-5)
    best_config.yaml    base + the best completed trial's values: `jobs/train.py --config` reads it
    best_trial.json     that trial's id, values, valid and test metrics
    trial_events.jsonl  what the driver saw happen to each trial (started, stopped by
                        ASHA, ended, failed): the `outcome` column is read from it

A trial's outcome is what actually happened: `completed` (its run wrote
final_metrics.json), `stopped_by_asha`, `interrupted` (running when the sweep was
interrupted: `--resume` continues it), `not_started`, `error`, `no_result`. Its metrics
come from its own run directory (final_metrics.json, else metrics.jsonl), so a trial
whose Tune result was lost (interrupted between the end of training and Tune noticing)
is still reported, and a trial that Tune restarts on resume after it had finished
reports its saved result instead of training again.

Every wait for resources is bounded by the sweep's `stall_timeout_s` (see `guard`).

The trial function builds the trial's TorchTrainer with `make_torch_trainer` (the same
training function as `jobs/train.py`) and a `TuneReportCallback`, which forwards rank 0's
report of each evaluation to Tune: ASHA sees valid Recall@20 per epoch. A trial that Tune
restarts after an interruption finds its run's Ray Train checkpoints and resumes from them.
With `workers_per_trial: 0` the trial runs the training loop in its own process instead
and forwards each row the loop writes to metrics.jsonl (`train_in_process`).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline import storage
from ld4mrec_dist.config import Config, load_config, save_config
from ld4mrec_dist.report import read_metrics
from ld4mrec_dist.tune import ledger, tune_state
from ld4mrec_dist.tune.ranking import TIE_RULE, best_row, rank_key, tied_with_best
from ld4mrec_dist.tune.search_space import SweepSpec, apply_overrides, load_sweep, param_space, sweep_to_dict

SWEEP_FILE = "sweep.yaml"
BASE_FILE = "base_config.yaml"
TRIAL_BASE_FILE = "trial_base.yaml"
RUNS_DIR = "runs"
TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best_config.yaml"
BEST_JSON = "best_trial.json"
FINAL_METRICS = "final_metrics.json"
METRICS_JSONL = "metrics.jsonl"
WORKER_START_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
TRIAL_DRIVER_CPU = 0.1
"""CPU of the trial function itself (it only drives Ray Train; 0 is rejected by Tune).
The trial's Ray Train workers reserve their own CPUs/GPUs in their placement group."""


@dataclass
class SweepSummary:
    sweep_dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    csv: Path
    heatmaps: list[Path]
    best_config: Path | None
    expected: int = 0
    """Trials the sweep defines (grid points × num_samples)."""

    @property
    def unfinished(self) -> list[dict[str, Any]]:
        """Trials an interruption left to do (`--resume` runs them)."""
        return [r for r in self.rows if r["outcome"] in (ledger.INTERRUPTED, ledger.NOT_STARTED)]

    @property
    def errored(self) -> list[dict[str, Any]]:
        """Trials that failed (`--resume` reruns them)."""
        return [r for r in self.rows if r["outcome"] == ledger.ERROR]

    @property
    def not_created(self) -> int:
        """Trials Tune had not created yet when the sweep ended (it creates them lazily,
        as concurrency allows): an interrupted sweep may end before the last ones exist."""
        return max(0, self.expected - len(self.rows))

    @property
    def left_to_run(self) -> int:
        return len(self.unfinished) + self.not_created


# ---------------------------------------------------------------- the trial


def make_trainable(sweep_dir: Path, stall_timeout_s: float = 600.0) -> Callable[..., Any]:
    """The Tune function trainable of this sweep, with its resource request: a little CPU
    to drive Ray Train, or, for in-process trials (workers_per_trial: 0), what training takes."""
    from ray import tune

    sweep_dir = Path(sweep_dir).resolve()
    base = load_config(sweep_dir / TRIAL_BASE_FILE)

    def ld4mrec_trial(params: dict[str, Any]) -> None:
        run_trial(params, sweep_dir, stall_timeout_s)

    request = {k.lower(): v for k, v in trial_request(base).items()}
    return tune.with_resources(ld4mrec_trial, request)


def trial_config(params: dict[str, Any], sweep_dir: Path, trial_id: str) -> Config:
    """The sweep's base config with this trial's values, typed and validated."""
    cfg = apply_overrides(load_config(sweep_dir / TRIAL_BASE_FILE), params)
    cfg.run.name = trial_id
    return cfg


def read_final(run_dir: Path) -> dict[str, Any] | None:
    """A run's final_metrics.json (written only when its training ran to the end), or None."""
    try:
        final = json.loads((run_dir / FINAL_METRICS).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return final if isinstance(final, dict) else None


def final_report(final: dict[str, Any]) -> dict[str, Any]:
    """A finished run's result in the shape of the loop's reports (what ASHA and Tune read)."""
    return {"epoch": int(final.get("epochs_run", 0)), "best_epoch": int(final.get("best_epoch", -1)),
            **{f"valid/{k}": v for k, v in (final.get("valid") or {}).items()},
            **{f"test/{k}": v for k, v in (final.get("test") or {}).items()}}


def run_trial(params: dict[str, Any], sweep_dir: Path, stall_timeout_s: float = 600.0) -> None:
    """One trial: a full training run named after the trial id, reporting to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ld4mrec_dist.train import launch, trainer
    from ld4mrec_dist.train.checkpoint import latest_checkpoint_dir
    from ld4mrec_dist.train.resources import runs_in_process

    t0 = time.perf_counter()
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(params, sweep_dir, trial_id)
    run_dir = Path(cfg.run.storage) / cfg.run.name
    final = read_final(run_dir)
    if final is not None:
        # It trained to its end before an interruption, and Tune (which had not yet seen it
        # finish) restarts it on resume: report the saved result instead of training again.
        tune.report(final_report(final))
        return
    if not runs_in_process(cfg) and latest_checkpoint_dir(run_dir) is not None:
        cfg.run.resume = str(run_dir)  # Tune restarted this trial: Ray Train resumes it
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # interrupted before its first checkpoint (or in-process): start it over
    prepared = trainer.prepare_run(cfg)
    if runs_in_process(cfg):
        out, reported = train_in_process(prepared.worker.as_dict(), run_dir)
        trainer.finish_run(cfg, run_dir, out, time.perf_counter() - t0)
        report_final_if_silent(run_dir, reported)
        return
    what = (f"trial {trial_id}: setting up its Ray Train run (cluster checks) "
            f"did not finish within stall_timeout_s={stall_timeout_s:g}s")
    report = TuneReportCallback()  # type: ignore[no-untyped-call]
    torch_trainer = within(stall_timeout_s, what, lambda: launch.make_torch_trainer(
        cfg, prepared.run_dir, prepared.worker, callbacks=[report]))
    bound_worker_start(torch_trainer, stall_timeout_s)
    try:
        out = launch.fit(torch_trainer)
    except Exception as err:
        if not is_worker_start_timeout(err):
            raise
        per_worker = f"{cfg.scaling.cpus_per_worker:g} CPU" + (" + 1 GPU" if cfg.scaling.use_gpu else "")
        from ld4mrec_dist.tune.guard import SweepStalledError, cluster_resources_line

        raise SweepStalledError(
            f"trial {trial_id}: its {cfg.scaling.num_workers} Ray Train worker(s) ({per_worker} each) could not "
            f"be placed within stall_timeout_s={stall_timeout_s:g}s; {cluster_resources_line()}") from None
    trainer.finish_run(cfg, run_dir, out, time.perf_counter() - t0)
    # Resumed from a checkpoint of its last evaluation, the loop has nothing left to report.
    report_final_if_silent(run_dir, reported=0 if cfg.run.resume else 1)


def report_final_if_silent(run_dir: Path, reported: int) -> None:
    """Report the run's final result when this attempt reported nothing to Tune.

    A trial restored after an interruption whose training had already reached its end
    (its checkpoint holds the last evaluation) trains no epoch and reports nothing; Tune
    would keep as its last result whatever it had saved before the interruption (an
    earlier epoch, or nothing). A duplicate of the last epoch's report is harmless: ASHA
    has already placed the trial at that epoch's rung."""
    from ray import tune

    final = read_final(run_dir)
    if not reported and final is not None:
        tune.report(final_report(final))


def train_in_process(loop_config: dict[str, Any], run_dir: Path,
                     poll_s: float = 0.5) -> tuple[dict[str, Any], int]:
    """The training loop in this trial's own process (no Ray Train: no start-up cost, no
    placement group), each evaluation reported to Tune as the loop writes it to
    metrics.jsonl: the loop's return value and the number of reports.

    When ASHA stops the trial, Tune's `report` ends this thread with SystemExit and the
    actor exits next. A loop thread still running then is torn down in the middle of a
    torch call at interpreter exit (`Fatal Python error: Aborted` and ~100 lines of stack
    in the sweep log): it is stopped and joined first."""
    from ray import tune

    from ld4mrec_dist.train.loop import train_loop_per_worker

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = train_loop_per_worker(loop_config)
        except BaseException as err:  # noqa: BLE001 - re-raised in the trial's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="ld4mrec-in-process-trial", daemon=True)
    thread.start()
    reported = last_epoch = 0
    try:
        while True:
            alive = thread.is_alive()  # read before the file: a finished loop has written every row
            for row in new_rows(run_dir / METRICS_JSONL, last_epoch):
                tune.report(row)
                reported, last_epoch = reported + 1, int(row["epoch"])
            if not alive:
                break
            thread.join(poll_s)
    except BaseException:
        stop_thread(thread)
        raise
    if "error" in box and not isinstance(box["error"], TrialStopped):
        raise box["error"]
    out: dict[str, Any] = box.get("out") or {}
    return out, reported


class TrialStopped(BaseException):
    """Raised inside an in-process trial's loop thread to end it (Tune stopped the trial)."""


def stop_thread(thread: threading.Thread, timeout_s: float = 60.0) -> None:
    """End `thread` at its next Python instruction (a running torch op finishes first) and
    wait for it. The loop has no stop flag of its own; an exception raised in its thread
    unwinds it like any error would, closing what it opened."""
    import ctypes

    if thread.ident is None or not thread.is_alive():
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(TrialStopped))
    thread.join(timeout_s)


def new_rows(path: Path, after_epoch: int) -> list[dict[str, Any]]:
    """metrics.jsonl rows past `after_epoch` ([] while the loop is rewriting the file)."""
    try:
        rows = read_metrics(path.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in rows if isinstance(r.get("epoch"), int) and r["epoch"] > after_epoch]


def within(seconds: float, what: str, fn: Callable[[], Any]) -> Any:
    """fn(), or a SweepStalledError naming `what` and the cluster's free resources after
    `seconds` (a thread, so that a wait on resources that never come cannot hang the trial;
    the trial actor ends on the error and takes the waiting thread and its tasks with it)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="ld4mrec-bounded-wait", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        from ld4mrec_dist.tune.guard import SweepStalledError, cluster_resources_line

        raise SweepStalledError(f"{what}; {cluster_resources_line()}")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def bound_worker_start(torch_trainer: Any, stall_timeout_s: float) -> None:
    """Ray Train retries a worker group that cannot be placed every 60 s without end
    (`controller_failure_limit=-1`): give up after about `stall_timeout_s` instead."""
    per_try = float(os.environ.setdefault(WORKER_START_ENV, f"{min(60.0, stall_timeout_s):g}"))
    failure = getattr(getattr(torch_trainer, "run_config", None), "failure_config", None)
    if failure is not None and getattr(failure, "controller_failure_limit", None) == -1:
        tries = max(1, math.ceil(stall_timeout_s / max(per_try, 1e-3)))
        torch_trainer.run_config.failure_config = dataclasses.replace(failure, controller_failure_limit=tries - 1)


def is_worker_start_timeout(err: BaseException) -> bool:
    """Whether a failed fit() gave up waiting for its worker group's resources."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        if type(e).__name__ == "WorkerGroupStartupTimeoutError":
            return True
        todo += [getattr(e, "controller_failure", None), e.__cause__, e.__context__]
    return False


# ---------------------------------------------------------------- start and resume


def trial_base(user_base: Config, sweep_dir: Path) -> Config:
    """`user_base` with absolute paths (Tune and Train chdir) and the trials' storage."""
    cfg = apply_overrides(user_base, {"run.name": "", "run.resume": "", "run.storage": str(sweep_dir / RUNS_DIR)})
    cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    if cfg.data.path:
        cfg.data.path = storage.normalize(cfg.data.path)  # absolute if local; a URI unchanged
    return cfg


def new_sweep_dir(storage: str | Path, name: str) -> Path:
    sweep_dir = Path(storage).expanduser().resolve() / name
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
        raise FileExistsError(f"sweep directory {sweep_dir} exists: choose another --name, "
                              f"or continue it with --resume {sweep_dir}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return sweep_dir


def auto_concurrency(cfg: Config) -> int:
    """Trials that fit in the cluster's resources now. (No CPU is held back: the ranks
    read their rows with pyarrow, not through Ray Data read tasks, docs/design.md §5.)"""
    import ray

    res = ray.cluster_resources()  # type: ignore[no-untyped-call]
    request = trial_request(cfg)
    if "GPU" in request:
        return max(1, int(res.get("GPU", 0) // request["GPU"]))
    return max(1, int(res.get("CPU", 1) // request["CPU"]))


def trial_request(cfg: Config) -> dict[str, float]:
    """What one trial reserves: its driver's CPU and its workers' placement group, or, in
    process, the CPUs (and GPU) of one worker."""
    from ld4mrec_dist.train.resources import runs_in_process

    if runs_in_process(cfg):
        gpu = {"GPU": 1.0} if cfg.scaling.use_gpu else {}
        return {"CPU": max(cfg.scaling.cpus_per_worker, TRIAL_DRIVER_CPU), **gpu}
    request = {"CPU": TRIAL_DRIVER_CPU + cfg.scaling.num_workers * cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        request["GPU"] = float(cfg.scaling.num_workers)
    return request


def tuner_for(spec: SweepSpec, cfg: Config, sweep_dir: Path, max_concurrent: int) -> Any:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from ld4mrec_dist.tune.guard import RecordingASHA, SweepGuard

    # Rungs in epochs; a trial that survives every rung ends itself at train.epochs (or
    # by patience) and writes its final outputs: ASHA does not stop it at max_t.
    scheduler = (RecordingASHA(sweep_dir, time_attr="epoch", max_t=cfg.train.epochs,
                               grace_period=spec.asha.grace_period, reduction_factor=spec.asha.reduction_factor,
                               brackets=spec.asha.brackets, stop_last_trials=False)
                 if spec.asha.enabled else FIFOScheduler())  # type: ignore[no-untyped-call]
    guard = SweepGuard(sweep_dir, spec.stall_timeout_s, trial_request(cfg))
    quiet_tune()
    return tune.Tuner(
        make_trainable(sweep_dir, spec.stall_timeout_s),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(metric=spec.metric, mode="max", scheduler=scheduler,
                                    num_samples=spec.num_samples, max_concurrent_trials=max_concurrent,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=sweep_dir.name, storage_path=str(sweep_dir.parent), callbacks=[guard],
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=TUNE_VERBOSITY),
    )


TUNE_VERBOSITY = 0
"""Tune's console output: none (its boxed status tables, trial boxes and result tables).
The sweep prints its own lines: one per trial start and end (`SweepGuard`), the trials'
epoch lines, and the summary. Tune's TensorBoard logger still writes each trial's events
(`tensorboard --logdir <sweep directory>`)."""


class _NoRestoreHint(logging.Filter):
    """Drops Tune's `Resume experiment with: Tuner.restore(...)`: the sweep prints its own
    command (`jobs/tune.py --resume`), which also checks the files Tune would unpickle."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


AIR_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"
"""Tune's console engine: its default one prints the experiment's box, the results path and
a TensorBoard hint at any verbosity; the classic one (0) prints nothing at verbose=0."""


def quiet_tune() -> None:
    """Tune's console down to what the user acts on (idempotent): no tables or boxes, no
    INFO lines, no `Tuner.restore(...)` hint."""
    os.environ.setdefault(AIR_OUTPUT_ENV, "0")
    # INFO lines of Tune's modules: "Wrote the latest version of all result files ...",
    # "Restoring the run from the latest experiment state file ...", timings.
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    tune_logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoRestoreHint) for f in tune_logger.filters):
        tune_logger.addFilter(_NoRestoreHint())


def trial_name(trial: Any) -> str:
    return str(trial.trial_id)


def create_sweep(spec: SweepSpec, user_base: Config, storage: str | Path, name: str,
                 max_concurrent: int | None = None) -> tuple[Path, Any]:
    """Write the sweep directory and prepare the dataset once: the directory and its Tuner."""
    from ld4mrec_dist.run_dir import resolve_dataset
    from ld4mrec_dist.tune.search_space import check_space_values

    check_space_values(spec, user_base)
    sweep_dir = new_sweep_dir(storage, name)
    base = trial_base(user_base, sweep_dir)
    (sweep_dir / SWEEP_FILE).write_text(_yaml(sweep_to_dict(spec)))
    save_config(user_base, sweep_dir / BASE_FILE)
    save_config(base, sweep_dir / TRIAL_BASE_FILE)
    resolve_dataset(base)  # once here, not raced by concurrent trials
    limit = max_concurrent or spec.max_concurrent_trials or auto_concurrency(base)
    workers = (f"{spec.workers_per_trial} Ray Train worker(s) each" if spec.workers_per_trial
               else "each trained in its own process (workers_per_trial: 0)")
    print(f"[ld4mrec] sweep {sweep_dir}: {_count(spec)} trial(s), at most {limit} at a time, "
          f"{workers}; selecting on {spec.metric}", flush=True)
    return sweep_dir, tuner_for(spec, base, sweep_dir, limit)


def start_sweep(spec: SweepSpec, user_base: Config, storage: str | Path, name: str,
                max_concurrent: int | None = None) -> tuple[Path, Any]:
    """`create_sweep`, then run every trial: the directory and Tune's results."""
    sweep_dir, tuner = create_sweep(spec, user_base, storage, name, max_concurrent)
    return sweep_dir, tuner.fit()


def resume_sweep(sweep_dir: str | Path, spec: SweepSpec) -> Any:
    """Continue a sweep with Tune's restore: finished trials are kept; interrupted, not
    started and failed trials run (from their last Ray Train checkpoint where they have
    one); trials that had finished training report their saved results.

    Failed trials always rerun: Tune's saved state does not reliably say that a trial
    failed (a trial whose actor died at the end of a sweep was saved as RUNNING, and Tune
    restarts those as unfinished), so skipping them would depend on when they failed."""
    from ray import tune

    sweep_dir = Path(sweep_dir).expanduser().resolve()
    if not tune.Tuner.can_restore(str(sweep_dir)):
        raise FileNotFoundError(f"--resume {sweep_dir}: not a Tune sweep directory (no experiment state): "
                                "it was interrupted before its first trial; start it again with --sweep")
    tune_state.verify(sweep_dir)  # before Tune unpickles anything
    print(f"[ld4mrec] resuming sweep {sweep_dir}: completed and ASHA-stopped trials are kept; interrupted, "
          "not started and failed trials run", flush=True)
    quiet_tune()
    tuner = tune.Tuner.restore(str(sweep_dir), trainable=make_trainable(sweep_dir, spec.stall_timeout_s),
                               resume_errored=True)
    _fresh_guard(tuner, spec, sweep_dir)
    return tuner.fit()


def _fresh_guard(tuner: Any, spec: SweepSpec, sweep_dir: Path) -> None:
    """The restored sweep's guard, for the directory where the sweep is now (Tune restores
    the callbacks it pickled at the start, with the path they had then; a sweep started
    before the guard existed has none), and its Tune verbosity."""
    from ld4mrec_dist.tune.guard import SweepGuard

    run_config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    if run_config is None:
        return
    callbacks = [c for c in run_config.callbacks or [] if not isinstance(c, SweepGuard)]
    base = load_config(sweep_dir / TRIAL_BASE_FILE)
    run_config.callbacks = [*callbacks, SweepGuard(sweep_dir, spec.stall_timeout_s, trial_request(base))]
    run_config.verbose = TUNE_VERBOSITY


def read_sweep_dir(sweep_dir: str | Path) -> tuple[SweepSpec, Config]:
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    if not (sweep_dir / SWEEP_FILE).is_file():
        raise FileNotFoundError(f"--resume {sweep_dir}: no {SWEEP_FILE}; is this a sweep directory?")
    return load_sweep(sweep_dir / SWEEP_FILE), load_config(sweep_dir / BASE_FILE)


# ---------------------------------------------------------------- outputs


def trial_rows(results: Any, spec: SweepSpec, sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per trial: values, outcome, metrics at its best valid epoch, epochs, time."""
    from ld4mrec_dist.tune.guard import trial_error_line

    events = ledger.read_events(sweep_dir)
    rows = []
    for result in results:
        trial_id = Path(result.path).name
        run_dir = sweep_dir / RUNS_DIR / trial_id
        final = read_final(run_dir)
        trial_events = events.get(trial_id, [])
        error = trial_error_line(result.error) if result.error else ""
        outcome = ledger.outcome_of(trial_events, final is not None, error)
        row: dict[str, Any] = {"trial_id": trial_id, **{k: result.config.get(k) for k in spec.keys},
                               "outcome": outcome}
        row.update(trial_metrics(spec.metric, run_dir, final, result.metrics_dataframe))
        if outcome == ledger.STOPPED_BY_ASHA:
            row["stopped_at_epoch"] = next((e.get("epoch") for e in reversed(trial_events)
                                            if e["event"] == ledger.STOPPED_BY_ASHA), None)
        row.update(run_dir=str(run_dir),
                   error=(error or ledger.error_of(trial_events)) if outcome == ledger.ERROR else "")
        rows.append(row)
    return rows


def trial_metrics(metric: str, run_dir: Path, final: dict[str, Any] | None, df: Any) -> dict[str, Any]:
    """Metrics at the trial's best valid epoch, from the trial's own run directory first
    (final_metrics.json, else metrics.jsonl), Tune's copy of its reports last."""
    if final is not None:
        return {"best_epoch": final.get("best_epoch"), "epochs": final.get("epochs_run"),
                **{f"valid/{k}": float(v) for k, v in (final.get("valid") or {}).items()},
                **{f"test/{k}": float(v) for k, v in (final.get("test") or {}).items()},
                "time_s": round(float(final.get("wall_time_s", float("nan"))), 1)}
    try:
        history = read_metrics((run_dir / METRICS_JSONL).read_text())
    except (OSError, ValueError):
        history = []
    history = [r for r in history if isinstance(r.get(metric), (int, float))]
    if not history and df is not None and not df.empty and metric in df:
        history = [r for r in df.to_dict("records") if isinstance(r.get(metric), (int, float))
                   and not math.isnan(r[metric])]
    if not history:
        return {"best_epoch": None}
    best = max(history, key=lambda r: r[metric])  # the first epoch with the best valid metric
    times = [float(r.get("train_time_s", 0.0)) + float(r.get("eval_time_s", 0.0)) for r in history]
    return {"best_epoch": int(best["epoch"]), "epochs": int(max(r["epoch"] for r in history)),
            **{k: float(v) for k, v in sorted(best.items()) if k.startswith(("valid/", "test/"))},
            "time_s": round(sum(times), 1)}


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    front = [c for c in columns if not c.startswith(("valid/", "test/")) and c not in ("run_dir", "error")]
    late = [c for c in front if c == "stopped_at_epoch"]  # after epochs/time_s, not among the values
    front = [c for c in front if c not in late] + late
    metrics = [c for c in columns if c.startswith("valid/")] + [c for c in columns if c.startswith("test/")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*front, *metrics, "run_dir", "error"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def completed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials that trained to their end: the only ones compared for 'best' and in heatmaps
    (a trial ASHA stopped at epoch 20 is not comparable with one that ran 400 epochs)."""
    return [r for r in rows if r.get("outcome") == ledger.COMPLETED]


def summarize(results: Any, spec: SweepSpec, user_base: Config, sweep_dir: Path) -> SweepSummary:
    """trials.csv, a heatmap per pair of grid keys, best_config.yaml and best_trial.json."""
    from ld4mrec_dist.report import format_table
    from ld4mrec_dist.tune.heatmap import plot_grid_heatmap

    rows = trial_rows(results, spec, sweep_dir)
    csv_path = write_csv(rows, sweep_dir / TRIALS_CSV)
    heatmaps = [plot_grid_heatmap(rows, x, y, spec.metric,
                                  sweep_dir / f"heatmap_{x.split('.')[-1]}_{y.split('.')[-1]}.png",
                                  title=f"{spec.name}: {sweep_dir.name}")
                for x, y in itertools.combinations(spec.grid, 2)]
    best = best_row(completed_rows(rows), spec.metric)
    best_path = None
    if best is not None:
        best_cfg = apply_overrides(user_base, {k: best[k] for k in spec.keys})
        best_cfg.run.name = ""
        best_path = sweep_dir / BEST_CONFIG
        save_config(best_cfg, best_path)
        (sweep_dir / BEST_JSON).write_text(json.dumps(best, indent=2))
    test = spec.metric.replace("valid/", "test/", 1)
    ranked = sorted(rows, key=lambda r: (r["outcome"] != ledger.COMPLETED,
                                         rank_key(r, spec.metric) if isinstance(r.get(spec.metric), float)
                                         and not math.isnan(r[spec.metric]) else (math.inf, math.inf, r["trial_id"])))
    print(format_table(["trial", *spec.keys, "outcome", "epochs", spec.metric, f"{test} (at best)"],
                       [[r["trial_id"], *[swept_value(r[k]) for k in spec.keys], r["outcome"], r.get("epochs", ""),
                         r.get(spec.metric, float("nan")), r.get(test, float("nan"))] for r in ranked]))
    counts = {o: sum(r["outcome"] == o for r in rows) for o in ledger.OUTCOMES}
    expected = _count(spec)
    not_created = max(0, expected - len(rows))
    print("[ld4mrec] trials: " + ", ".join(f"{n} {o}" for o, n in counts.items() if n)
          + (f", {not_created} not created yet" if not_created else "") + f" (of {expected})", flush=True)
    for r in rows:
        if r["outcome"] == ledger.ERROR:
            print(f"[ld4mrec] trial {r['trial_id']} failed: {r['error']}", flush=True)
    tied = tied_with_best(completed_rows(rows), spec.metric)
    if len(tied) > 1:
        print(f"[ld4mrec] {len(tied)} completed trials tie at {spec.metric} {best[spec.metric]:.4f} "  # type: ignore[index]
              f"({', '.join(r['trial_id'] for r in tied)}): {TIE_RULE}", flush=True)
    if best is not None:
        print(f"[ld4mrec] best completed trial {best['trial_id']} (on {spec.metric}); its config: {best_path}\n"
              f"[ld4mrec] retrain it with: python jobs/train.py --config {best_path}", flush=True)
    else:
        print("[ld4mrec] no trial completed: no best config", flush=True)
    print(f"[ld4mrec] sweep outputs in {sweep_dir}: {TRIALS_CSV}"
          + "".join(f", {h.name}" for h in heatmaps) + (f", {BEST_CONFIG}" if best_path else ""), flush=True)
    return SweepSummary(sweep_dir, rows, best, csv_path, heatmaps, best_path, expected)


def swept_value(value: Any) -> Any:
    """A trial's value of a swept key as the summary prints it: floats in full (`:g`), not
    the table's 4 decimals, which print weight decay 1e-05 as 0.0000 and lr 2.5e-4 as 0.0003."""
    return f"{value:g}" if isinstance(value, float) else value


def _count(spec: SweepSpec) -> int:
    n = spec.num_samples
    for values in spec.grid.values():
        n *= len(values)
    return n


def _yaml(d: dict[str, Any]) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(d))
