"""Side-by-side runs on one prepared dataset: LD4MRec and its ablations, the project's
most-popular ranking and library baselines (ld4mrec_dist/eval/baselines.py), every one
scored by the project's evaluator (same users, same masking, same metrics).

A library baseline's hyperparameters are chosen on VALID (`eval.select_metric`) over its
grid, fitted with the first seed; the chosen setting is then run once per seed (once in
all for a deterministic baseline) and test is reported at it. Each row gives mean ± std of
test over its runs and the mean wall time of one run (fit + scoring valid and test; for
LD4MRec the whole training run, early stopping included).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from data_pipeline.dataset import PreparedDataset, open_dataset
from ld4mrec_dist.config import Config, metric_names
from ld4mrec_dist.eval.baselines import (
    Baseline,
    Params,
    TrainData,
    baseline,
    check_available,
    most_popular,
    train_data_of,
)
from ld4mrec_dist.eval.evaluator import EvalData, ScoreFn, dataset_eval_data, evaluate
from ld4mrec_dist.run_dir import resolve_dataset
from ld4mrec_dist.train.trainer import run_training

Log = Callable[[str], None]
Row = dict[str, Any]  # one table row: model, runs, test (mean), test_std, time_s, … (also the JSON)


def _quiet(_: str) -> None:
    pass


def mean_and_std(runs: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per metric: mean and population std over runs (std 0 for one run)."""
    return ({k: statistics.fmean(r[k] for r in runs) for k in runs[0]},
            {k: statistics.pstdev(r[k] for r in runs) for k in runs[0]})


def summary_row(model: str, valids: list[dict[str, float]], tests: list[dict[str, float]], times: list[float],
                **extra: Any) -> Row:
    """One table row from per-run valid/test metrics and wall times."""
    valid, valid_std = mean_and_std(valids)
    test, test_std = mean_and_std(tests)
    return {"model": model, "runs": len(tests), "test": test, "test_std": test_std, "valid": valid,
            "valid_std": valid_std, "time_s": statistics.fmean(times), "time_std": statistics.pstdev(times),
            "tests": tests, **extra}


def _scored(score: ScoreFn, data: EvalData, cfg: Config) -> dict[str, float]:
    return evaluate(score, data, cfg.eval.ks, cfg.eval.batch_size, torch.device("cpu"))


def most_popular_row(ds: PreparedDataset, splits: dict[str, EvalData], cfg: Config) -> Row:
    start = time.perf_counter()
    score = most_popular(ds.item_degree)
    valid, test = _scored(score, splits["valid"], cfg), _scored(score, splits["test"], cfg)
    return summary_row("most-popular", [valid], [test], [time.perf_counter() - start], kind="reference",
                       params={})


@dataclass
class Fitted:
    """A fitted baseline: its scores, valid metrics, and the seconds fit + valid took."""

    score: ScoreFn
    valid: dict[str, float]
    seconds: float
    params: Params


def fit_and_validate(b: Baseline, data: TrainData, splits: dict[str, EvalData], cfg: Config,
                     params: Params, seed: int | None) -> Fitted:
    start = time.perf_counter()
    score = b.fit(data, params, seed)
    valid = _scored(score, splits["valid"], cfg)
    return Fitted(score, valid, time.perf_counter() - start, params)


def baseline_row(b: Baseline, data: TrainData, splits: dict[str, EvalData], cfg: Config, seeds: list[int],
                 quick: bool = False, log: Log = _quiet) -> Row:
    """Grid on valid with the first seed, then the chosen setting once per seed, test at it."""
    select = cfg.eval.select_metric
    first_seed = seeds[0] if b.stochastic else None
    search_start = time.perf_counter()
    grid: list[Row] = []
    best: Fitted | None = None
    for params in b.points(quick):
        fitted = fit_and_validate(b, data, splits, cfg, params, first_seed)
        grid.append({"params": params, "valid": fitted.valid, "time_s": fitted.seconds})
        log(f"{b.name} {params} seed={first_seed}: valid {select} {fitted.valid[select]:.4f} "
            f"({fitted.seconds:.1f} s)")
        if best is None or fitted.valid[select] > best.valid[select]:  # a tie keeps the earlier setting
            best = fitted
        del fitted  # at most two fitted models alive (EASE holds an I×I matrix)
    assert best is not None, f"{b.name}: empty grid"
    search_s = time.perf_counter() - search_start
    chosen = best.params
    valids, tests, times = [], [], []
    for seed in (seeds if b.stochastic else [None]):
        run = best if seed == first_seed else fit_and_validate(b, data, splits, cfg, chosen, seed)
        start = time.perf_counter()
        tests.append(_scored(run.score, splits["test"], cfg))
        valids.append(run.valid)
        times.append(run.seconds + time.perf_counter() - start)
        log(f"{b.name} chosen seed={seed}: test {select} {tests[-1][select]:.4f}")
        del run
    selected = b.quick_grid if quick and b.quick_grid is not None else b.grid
    return summary_row(b.label, valids, tests, times, kind="baseline", name=b.name, params=chosen,
                       chosen={k: chosen[k] for k in selected}, seeds=seeds if b.stochastic else [],
                       grid=grid, search_s=search_s, note=b.note)


def ld4mrec_row(base: Config, variant: str, seeds: list[int], stamp: str, log: Log = _quiet) -> Row:
    valids, tests, times, epochs, epochs_run = [], [], [], [], []
    for seed in seeds:
        cfg = copy.deepcopy(base)
        cfg.model.ablation, cfg.train.seed = variant, seed
        cfg.run.name = f"compare-{stamp}-{variant}-seed{seed}"
        start = time.perf_counter()
        result = run_training(cfg)
        times.append(time.perf_counter() - start)
        valids.append(result.valid)
        tests.append(result.test)
        epochs.append(result.best_epoch)
        epochs_run.append(result.epochs_run)
        log(f"LD4MRec {variant} seed={seed}: best epoch {result.best_epoch} of {result.epochs_run}, "
            f"test {base.eval.select_metric} {result.test[base.eval.select_metric]:.4f} ({times[-1]:.0f} s)")
    return summary_row("LD4MRec" if variant == "none" else f"LD4MRec {variant}", valids, tests, times,
                       kind="ld4mrec", variant=variant, seeds=seeds, best_epochs=epochs, epochs_run=epochs_run,
                       epoch_cap=base.train.epochs, params={})


def compare(base: Config, variants: list[str], seeds: list[int], baselines: list[str] | None = None,
            quick: bool = False, log: Log = _quiet) -> list[Row]:
    """One row per model: mean (and spread) over seeds of test at the best valid setting.
    The project's most-popular row comes first unless cornac's `mostpop` is asked for."""
    baselines = list(baselines or [])
    check_available(baselines)  # a missing extra fails before any training
    ds = open_dataset(resolve_dataset(base))
    splits = dataset_eval_data(ds, base.eval.mask_valid_at_test)
    rows = [] if "mostpop" in baselines else [most_popular_row(ds, splits, base)]
    if baselines:
        data = train_data_of(ds, splits["valid"].inputs)
        rows += [baseline_row(baseline(name), data, splits, base, seeds, quick, log) for name in baselines]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows += [ld4mrec_row(base, variant, seeds, stamp, log) for variant in variants]
    return rows


def _cell(row: Row, name: str) -> str:
    spread = f" ± {row['test_std'][name]:.4f}" if row.get("test_std") and row["runs"] > 1 else ""
    return f"{row['test'][name]:.4f}{spread}"


def capped_note(row: Row) -> str:
    """For runs that the epoch cap stopped while valid still improved (best epoch = the
    last epoch = train.epochs): `best epoch 15 of 15` per such run, and the fix."""
    cap = row.get("epoch_cap")
    capped = [(b, n) for b, n in zip(row.get("best_epochs", []), row.get("epochs_run", []), strict=False)
              if n == cap and b == n]
    if not capped:
        return ""
    runs = "; ".join(f"best epoch {b} of {n}" for b, n in capped)
    return f"⚠ {runs}: stopped by the epoch cap while still improving (raise train.epochs)"


def _settings(row: Row) -> str:
    """The valid-selected values (the JSON's `params` has every setting passed), and a
    warning for runs stopped by the epoch cap while still improving."""
    chosen = ", ".join(f"{k}={v}" for k, v in (row.get("chosen") or {}).items())
    return "; ".join(part for part in (chosen, capped_note(row)) if part)


def markdown_table(rows: list[Row], ks: list[int]) -> str:
    """Test metrics (mean ± std over runs), the mean wall time of one run, the valid-selected settings."""
    names = metric_names(ks, by_cutoff=True)
    header = "| model | runs | " + " | ".join(f"test {n}" for n in names) + " | time (s) | settings |"
    sep = "|" + " --- |" * (len(names) + 4)
    body = [f"| {r['model']} | {r['runs']} | " + " | ".join(_cell(r, n) for n in names)
            + (f" | {r['time_s']:.1f}" if "time_s" in r else " | ") + f" | {_settings(r)} |" for r in rows]
    return "\n".join([header, sep, *body])
