"""Side-by-side runs: LD4MRec variants (ablations) and a most-popular ranking."""

from __future__ import annotations

import copy
import statistics
import time

import torch

from data_pipeline.dataset import open_dataset
from ld4mrec_dist.config import Config
from ld4mrec_dist.eval.baselines import most_popular
from ld4mrec_dist.eval.evaluator import evaluate, split_eval_data
from ld4mrec_dist.train.trainer import resolve_dataset, run_training


def most_popular_metrics(cfg: Config) -> dict[str, float]:
    ds = open_dataset(resolve_dataset(cfg))
    test = split_eval_data(ds, ds.split_csr("train"), cfg.eval.mask_valid_at_test)["test"]
    return evaluate(most_popular(ds.item_degree), test, cfg.eval.ks, cfg.eval.batch_size, torch.device("cpu"))


def compare(base: Config, variants: list[str], seeds: list[int]) -> list[dict]:
    """One row per model: mean (and spread) of test metrics at the best valid epoch."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = [{"model": "most-popular", "runs": 1, "test": most_popular_metrics(base), "best_epochs": []}]
    for variant in variants:
        tests, epochs = [], []
        for seed in seeds:
            cfg = copy.deepcopy(base)
            cfg.model.ablation, cfg.train.seed = variant, seed
            cfg.run.name = f"compare-{stamp}-{variant}-seed{seed}"
            result = run_training(cfg)
            tests.append(result.test)
            epochs.append(result.best_epoch)
        mean = {k: statistics.fmean(t[k] for t in tests) for k in tests[0]}
        spread = {k: statistics.pstdev(t[k] for t in tests) for k in tests[0]}
        rows.append({"model": "LD4MRec" if variant == "none" else f"LD4MRec {variant}", "runs": len(seeds),
                     "test": mean, "test_std": spread, "best_epochs": epochs})
    return rows


def markdown_table(rows: list[dict], ks: list[int]) -> str:
    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    header = "| model | runs | " + " | ".join(f"test {n}" for n in names) + " |"
    sep = "|" + " --- |" * (len(names) + 2)
    body = [f"| {r['model']} | {r['runs']} | " + " | ".join(
        f"{r['test'][n]:.4f}" + (f" ± {r['test_std'][n]:.4f}" if r.get("test_std") and r["runs"] > 1 else "")
        for n in names) + " |" for r in rows]
    return "\n".join([header, sep, *body])
