"""Run, resume and summarise a sweep on Ray Tune; each trial is a full Ray Train run.

A sweep directory (`<storage>/<name>/`) is Tune's experiment directory plus:

    sweep.yaml          the sweep file as run (what --resume reads back)
    base_config.yaml    the base config every trial starts from (paths as the user gave them)
    trial_base.yaml     the same with absolute paths and run.storage = runs/
    runs/<trial_id>/    each trial's run directory, as `jobs/train.py` leaves one
    trials.csv          one row per trial: its values, best valid metric, test at that epoch
    heatmap_<x>_<y>.png one per pair of grid keys (paper Figs. 4-5)
    best_config.yaml    base + the best trial's values: `jobs/train.py --config` reads it
    best_trial.json     the best trial's id, values, valid and test metrics

The trial function builds the trial's TorchTrainer with `make_torch_trainer` (the same
training function as `jobs/train.py`) and a `TuneReportCallback`, which forwards rank 0's
report of each evaluation to Tune: ASHA sees valid Recall@20 per epoch. A trial that Tune
restarts after an interruption finds its run's Ray Train checkpoints and resumes from them.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from data_pipeline import storage
from ld4mrec_dist.config import Config, load_config, save_config
from ld4mrec_dist.tune.search_space import (SweepSpec, apply_overrides, load_sweep, param_space,
                                            sweep_to_dict)

SWEEP_FILE = "sweep.yaml"
BASE_FILE = "base_config.yaml"
TRIAL_BASE_FILE = "trial_base.yaml"
RUNS_DIR = "runs"
TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best_config.yaml"
BEST_JSON = "best_trial.json"
TRIAL_DRIVER_CPU = 0.1
"""CPU of the trial function itself (it only drives Ray Train; 0 is rejected by Tune).
The trial's Ray Train workers reserve their own CPUs/GPUs in their placement group."""


@dataclass
class SweepSummary:
    sweep_dir: Path
    rows: list[dict[str, Any]]
    best: Optional[dict[str, Any]]
    csv: Path
    heatmaps: list[Path]
    best_config: Optional[Path]


# ---------------------------------------------------------------- the trial


def make_trainable(sweep_dir: Path) -> Callable:
    """The Tune function trainable of this sweep, with its (small) resource request."""
    from ray import tune

    sweep_dir = Path(sweep_dir).resolve()

    def ld4mrec_trial(params: dict[str, Any]) -> None:
        run_trial(params, sweep_dir)

    return tune.with_resources(ld4mrec_trial, {"cpu": TRIAL_DRIVER_CPU})


def trial_config(params: dict[str, Any], sweep_dir: Path, trial_id: str) -> Config:
    """The sweep's base config with this trial's values, typed and validated."""
    cfg = apply_overrides(load_config(sweep_dir / TRIAL_BASE_FILE), params)
    cfg.run.name = trial_id
    return cfg


def run_trial(params: dict[str, Any], sweep_dir: Path) -> None:
    """One trial: a full training run named after the trial id, reporting to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ld4mrec_dist.train import trainer

    t0 = time.perf_counter()
    cfg = trial_config(params, sweep_dir, tune.get_context().get_trial_id())
    run_dir = Path(cfg.run.storage) / cfg.run.name
    if trainer.latest_checkpoint_dir(run_dir) is not None:
        cfg.run.resume = str(run_dir)  # Tune restarted this trial: Ray Train resumes it
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # interrupted before its first checkpoint: start it over
    ds, run_dir = trainer.prepare_run(cfg)
    torch_trainer = trainer.make_torch_trainer(cfg, ds, run_dir, callbacks=[TuneReportCallback()])
    out = trainer.fit(torch_trainer)
    trainer.finish_run(cfg, run_dir, out, time.perf_counter() - t0)


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
    """Trials that fit in the cluster's resources now, leaving one CPU to Ray Data's
    read tasks (RAY_NOTES: workers holding every CPU deadlock the Parquet reads)."""
    import ray

    res = ray.cluster_resources()
    workers = cfg.scaling.num_workers
    if cfg.scaling.use_gpu:
        return max(1, int(res.get("GPU", 0) // workers))
    per_trial = workers * cfg.scaling.cpus_per_worker + TRIAL_DRIVER_CPU
    return max(1, int((res.get("CPU", 1) - 1) // per_trial))


def tuner_for(spec: SweepSpec, cfg: Config, sweep_dir: Path, max_concurrent: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    # Rungs in epochs; a trial that survives every rung ends itself at train.epochs (or
    # by patience) and writes its final outputs: ASHA does not stop it at max_t.
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs, grace_period=spec.asha.grace_period,
                               reduction_factor=spec.asha.reduction_factor, brackets=spec.asha.brackets,
                               stop_last_trials=False)
                 if spec.asha.enabled else FIFOScheduler())
    return tune.Tuner(
        make_trainable(sweep_dir),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(metric=spec.metric, mode="max", scheduler=scheduler,
                                    num_samples=spec.num_samples, max_concurrent_trials=max_concurrent,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=sweep_dir.name, storage_path=str(sweep_dir.parent),
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def trial_name(trial) -> str:
    return trial.trial_id


def start_sweep(spec: SweepSpec, user_base: Config, storage: str | Path, name: str,
                max_concurrent: Optional[int] = None):
    """Write the sweep directory, prepare the dataset once, run every trial: the results."""
    from ld4mrec_dist.tune.search_space import check_space_values
    from ld4mrec_dist.train.trainer import resolve_dataset

    check_space_values(spec, user_base)
    sweep_dir = new_sweep_dir(storage, name)
    base = trial_base(user_base, sweep_dir)
    (sweep_dir / SWEEP_FILE).write_text(_yaml(sweep_to_dict(spec)))
    save_config(user_base, sweep_dir / BASE_FILE)
    save_config(base, sweep_dir / TRIAL_BASE_FILE)
    resolve_dataset(base)  # once here, not raced by concurrent trials
    limit = max_concurrent or spec.max_concurrent_trials or auto_concurrency(base)
    print(f"[ld4mrec] sweep {sweep_dir}: {_count(spec)} trial(s), at most {limit} at a time, "
          f"{spec.workers_per_trial} worker(s) each; selecting on {spec.metric}", flush=True)
    return sweep_dir, tuner_for(spec, base, sweep_dir, limit).fit()


def resume_sweep(sweep_dir: str | Path, retry_errored: bool = False):
    """Continue an interrupted sweep with Tune's restore: finished trials are kept,
    unfinished ones restart and resume from their last Ray Train checkpoint (and errored
    ones too with `retry_errored`)."""
    from ray import tune

    sweep_dir = Path(sweep_dir).expanduser().resolve()
    if not tune.Tuner.can_restore(str(sweep_dir)):
        raise FileNotFoundError(f"--resume {sweep_dir}: not a Tune sweep directory (no experiment state)")
    print(f"[ld4mrec] resuming sweep {sweep_dir}", flush=True)
    tuner = tune.Tuner.restore(str(sweep_dir), trainable=make_trainable(sweep_dir),
                                 resume_errored=retry_errored)
    return tuner.fit()


def read_sweep_dir(sweep_dir: str | Path) -> tuple[SweepSpec, Config]:
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    if not (sweep_dir / SWEEP_FILE).is_file():
        raise FileNotFoundError(f"--resume {sweep_dir}: no {SWEEP_FILE}; is this a sweep directory?")
    return load_sweep(sweep_dir / SWEEP_FILE), load_config(sweep_dir / BASE_FILE)


# ---------------------------------------------------------------- outputs


def trial_rows(results, spec: SweepSpec, sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per trial: values, metrics at its best valid epoch, epochs, time, outcome."""
    rows = []
    for result in results:
        df = result.metrics_dataframe
        trial_id = Path(result.path).name
        row: dict[str, Any] = {"trial_id": trial_id}
        row.update({k: result.config.get(k) for k in spec.keys})
        run_dir = sweep_dir / RUNS_DIR / trial_id
        if df is None or df.empty or spec.metric not in df:
            row.update(outcome="error" if result.error else "no_result", best_epoch=None)
        else:
            best = df.loc[df[spec.metric].idxmax()]  # first epoch with the best valid metric
            metrics = sorted(c for c in df.columns if c.startswith(("valid/", "test/")))
            row.update(outcome=("error" if result.error else
                                "completed" if (run_dir / "final_metrics.json").is_file() else "stopped_by_asha"),
                       best_epoch=int(best["epoch"]), **{m: float(best[m]) for m in metrics},
                       epochs=int(df["epoch"].max()), time_s=round(float(df["time_total_s"].max()), 1))
        row.update(run_dir=str(run_dir), error=str(result.error).splitlines()[0] if result.error else "")
        rows.append(row)
    return rows


def best_row(rows: list[dict[str, Any]], metric: str) -> Optional[dict[str, Any]]:
    """The trial with the highest valid metric (ties: the first); None if none reported."""
    scored = [r for r in rows if isinstance(r.get(metric), float) and not math.isnan(r[metric])]
    return max(scored, key=lambda r: r[metric]) if scored else None


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    front = [c for c in columns if not c.startswith(("valid/", "test/")) and c not in ("run_dir", "error")]
    metrics = [c for c in columns if c.startswith("valid/")] + [c for c in columns if c.startswith("test/")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*front, *metrics, "run_dir", "error"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def summarize(results, spec: SweepSpec, user_base: Config, sweep_dir: Path) -> SweepSummary:
    """trials.csv, a heatmap per pair of grid keys, best_config.yaml and best_trial.json."""
    from ld4mrec_dist.report import format_table
    from ld4mrec_dist.tune.heatmap import plot_grid_heatmap

    rows = trial_rows(results, spec, sweep_dir)
    csv_path = write_csv(rows, sweep_dir / TRIALS_CSV)
    heatmaps = [plot_grid_heatmap(rows, x, y, spec.metric,
                                  sweep_dir / f"heatmap_{x.split('.')[-1]}_{y.split('.')[-1]}.png",
                                  title=f"{spec.name}: {sweep_dir.name}")
                for x, y in itertools.combinations(spec.grid, 2)]
    best = best_row(rows, spec.metric)
    best_path = None
    if best is not None:
        best_cfg = apply_overrides(user_base, {k: best[k] for k in spec.keys})
        best_cfg.run.name = ""
        best_path = sweep_dir / BEST_CONFIG
        save_config(best_cfg, best_path)
        (sweep_dir / BEST_JSON).write_text(json.dumps(best, indent=2))
    test = spec.metric.replace("valid/", "test/", 1)
    ranked = sorted(rows, key=lambda r: -r[spec.metric] if isinstance(r.get(spec.metric), float) else math.inf)
    print(format_table(["trial", *spec.keys, "outcome", "epochs", spec.metric, f"{test} (at best)"],
                       [[r["trial_id"], *[r[k] for k in spec.keys], r["outcome"], r.get("epochs", ""),
                         r.get(spec.metric, float("nan")), r.get(test, float("nan"))] for r in ranked]))
    if best is not None:
        print(f"[ld4mrec] best trial {best['trial_id']} (on {spec.metric}); its config: {best_path}\n"
              f"[ld4mrec] retrain it with: python jobs/train.py --config {best_path}", flush=True)
    print(f"[ld4mrec] sweep outputs in {sweep_dir}: {TRIALS_CSV}"
          + "".join(f", {h.name}" for h in heatmaps) + (f", {BEST_CONFIG}" if best_path else ""), flush=True)
    return SweepSummary(sweep_dir, rows, best, csv_path, heatmaps, best_path)


def _count(spec: SweepSpec) -> int:
    n = spec.num_samples
    for values in spec.grid.values():
        n *= len(values)
    return n


def _yaml(d: dict[str, Any]) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(d))
