"""(3) Memory at Electronics scale: peak RSS of one worker, training steps + one evaluation.

A child process (`python -m benchmarks.memory --child ...`) does what one rank of the
trainer does, with world size 1 (so it holds every train row: the worst case per worker):
open the dataset, load V_k (fitted beforehand, as the driver does), build LD4MRec (the
4,096-d + 384-d item features copied in memory) and its optimizers, keep the train rows
as a CSR RowStore, run N training steps of the loop's step (harness.profiled_steps), then
one all-ranking evaluation pass on valid users with the trainer's evaluator. Its peak RSS
(ru_maxrss, also cross-checked with RUSAGE_CHILDREN in the parent) is set beside the
48 GB of a dense |U|×|I| float32 matrix (what a DiffRec-style loader allocates).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Context, dataset_path, item_factors, row

BENCH = "memory"
SHAPE = "electronics"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(dataset: str, factors: str, steps: int, eval_users: int, hidden: int, batch: int) -> dict:
    import numpy as np
    import torch

    from benchmarks.common import peak_rss_mb
    from benchmarks.harness import build, make_config, profiled_steps
    from data_pipeline.dataset import open_dataset
    from ld4mrec_dist.eval.evaluator import EvalData, evaluate
    from ld4mrec_dist.rows import rows_with_items

    marks = {"start": rss_mb()}
    cfg = make_config(dataset, [f"model.hidden={hidden}", f"train.batch_size={batch}"])
    ds = open_dataset(dataset)
    v_IK = np.load(factors)
    model, opts = build(cfg, ds, v_IK)
    marks["model built (features in memory)"] = rss_mb()
    train = ds.split_csr("train")
    store = rows_with_items(train)
    marks["train rows (CSR RowStore)"] = rss_mb()
    t0 = time.perf_counter()
    prof = profiled_steps(model, opts, store, cfg, steps, warmup=2)
    train_s = time.perf_counter() - t0
    marks[f"after {steps + 2} train steps"] = rss_mb()
    peak_train = peak_rss_mb()
    users = ds.eval_users("valid")
    users = users if eval_users <= 0 else users[:eval_users]
    model.eval()
    t0 = time.perf_counter()
    metrics = evaluate(model.score, EvalData(train, ds.split_csr("valid"), users), cfg.eval.ks,
                       cfg.eval.batch_size, torch.device("cpu"))
    eval_s = time.perf_counter() - t0
    marks["after evaluation"] = rss_mb()
    params = sum(p.numel() for p in model.parameters())
    return {"peak_rss_mb": peak_rss_mb(), "peak_rss_train_mb": peak_train, "rss_marks_mb": marks,
            "train_steps": steps + 2, "train_s": train_s, "step_s": prof["step_s"], "eval_users": int(len(users)),
            "eval_s": eval_s, "eval_recall@20": metrics.get("recall@20"), "params": params,
            "n_users": ds.n_users, "n_items": ds.n_items, "train_nnz": int(train.nnz),
            "features": {m: list(ds.feature(m).shape) for m in ds.modalities}, "hidden": hidden, "batch": batch,
            "torch_threads": torch.get_num_threads()}


def run(ctx: Context) -> list[dict]:
    from benchmarks.common import machine, run_json_subprocess

    path = dataset_path(SHAPE, ctx.data_root)
    item_factors(SHAPE, data_root=ctx.data_root)  # fitted once, in this (driver) process
    factors = ctx.data_root / f"item_factors-{SHAPE}-k64.npy"
    steps, eval_users = (30, 4096) if ctx.quick else (300, 0)
    hidden, batch = 256, 256
    res, child_peak = run_json_subprocess(
        ["-m", "benchmarks.memory", "--child", str(path), str(factors), str(steps), str(eval_users), str(hidden),
         str(batch)], timeout=3600)
    dense_bytes = res["n_users"] * res["n_items"] * 4
    mem_gb = machine()["mem_gb"] or 24.0
    peak_b = res["peak_rss_mb"] * 2**20
    out = row(BENCH, f"peak RSS, 1 worker: {res['train_steps']} steps + eval of {res['eval_users']:,} users "
                     f"({SHAPE}, hidden {hidden}, batch {batch})", peak_b, "B",
              ratio=dense_bytes / peak_b, reference="dense |U|×|I| float32 matrix",
              reference_bytes=dense_bytes, target=None, child_peak_rss_rusage_mb=child_peak,
              met=bool(peak_b < mem_gb * 2**30), target_text=f"< {mem_gb} GB (this machine)", **res)
    return [out]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--child", nargs=6, metavar=("DATASET", "FACTORS", "STEPS", "EVAL_USERS", "HIDDEN", "BATCH"))
    a = p.parse_args()
    d, f, s, e, h, b = a.child
    print(json.dumps(child(d, f, int(s), int(e), int(h), int(b))))
