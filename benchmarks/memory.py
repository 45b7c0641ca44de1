"""(3) Memory at Electronics scale: peak RSS of one rank, training steps + one evaluation.

A child process (`python -m benchmarks.memory --child ...`) does what rank r of W does in
the trainer (W = 1, then rank 0 of W = 2): open the dataset, load V_k (fitted beforehand,
as the driver does), build LD4MRec (the 4,096-d + 384-d item features, memory-mapped) and
its optimizers, read *its own users'* train/valid/test rows once (partition.read_rank_rows,
the trainer's one data path), run N training steps of the loop's step
(harness.profiled_steps), then one all-ranking evaluation pass on its valid users with the
trainer's evaluator. Its peak RSS (ru_maxrss, also cross-checked with RUSAGE_CHILDREN in
the parent) is set beside the 48 GB of a dense |U|×|I| float32 matrix (what a
DiffRec-style loader allocates). The collectives are no-ops in the child (no process
group): their buffers are O(W·B·D), negligible here.
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


def child(dataset: str, factors: str, steps: int, eval_users: int, hidden: int, batch: int,
          rank: int = 0, world: int = 1) -> dict:
    import numpy as np
    import torch

    from benchmarks.common import peak_rss_mb
    from benchmarks.harness import build, make_config, profiled_steps
    from data_pipeline.dataset import open_dataset
    from ld4mrec_dist.eval.evaluator import eval_data, evaluate
    from ld4mrec_dist.partition import read_rank_rows

    marks = {"start": rss_mb()}
    cfg = make_config(dataset, [f"model.hidden={hidden}", f"train.batch_size={batch}"])
    ds = open_dataset(dataset)
    v_IK = np.load(factors)
    model, opts = build(cfg, ds, v_IK)
    marks["model built (features in memory)"] = rss_mb()
    rows = read_rank_rows(ds, rank, world)
    store = rows.train_store()
    marks[f"rank {rank} of {world}: its rows of the 3 splits (CSR)"] = rss_mb()
    t0 = time.perf_counter()
    prof = profiled_steps(model, opts, store, cfg, steps, warmup=2)
    train_s = time.perf_counter() - t0
    marks[f"after {steps + 2} train steps"] = rss_mb()
    peak_train = peak_rss_mb()
    valid = eval_data(rows, cfg.eval.mask_valid_at_test)["valid"]
    users = valid.users = valid.users if eval_users <= 0 else valid.users[:eval_users]
    model.eval()
    t0 = time.perf_counter()
    metrics = evaluate(model.score, valid, cfg.eval.ks, cfg.eval.batch_size, torch.device("cpu"))
    eval_s = time.perf_counter() - t0
    marks["after evaluation"] = rss_mb()
    params = sum(p.numel() for p in model.parameters())
    return {"peak_rss_mb": peak_rss_mb(), "peak_rss_train_mb": peak_train, "rss_marks_mb": marks,
            "train_steps": steps + 2, "train_s": train_s, "step_s": prof["step_s"], "eval_users": int(len(users)),
            "eval_s": eval_s, "eval_recall@20": metrics.get("recall@20"), "params": params,
            "n_users": ds.n_users, "n_items": ds.n_items, "rank": rank, "world": world,
            "rank_users": len(rows.users), "rank_nnz": int(rows.train.nnz + rows.valid.nnz + rows.test.nnz),
            "features": {m: list(ds.feature(m).shape) for m in ds.modalities}, "hidden": hidden, "batch": batch,
            "torch_threads": torch.get_num_threads()}


def run(ctx: Context) -> list[dict]:
    from benchmarks.common import machine, run_json_subprocess

    path = dataset_path(SHAPE, ctx.data_root)
    item_factors(SHAPE, data_root=ctx.data_root)  # fitted once, in this (driver) process
    factors = ctx.data_root / f"item_factors-{SHAPE}-k64.npy"
    steps, eval_users = (30, 4096) if ctx.quick else (300, 0)
    hidden, batch = 256, 256
    mem_gb = machine()["mem_gb"] or 24.0
    out = []
    for world in (1, 2):  # rank 0 of W: per-rank memory of the one data path
        res, child_peak = run_json_subprocess(
            ["-m", "benchmarks.memory", "--child", str(path), str(factors), str(steps), str(eval_users),
             str(hidden), str(batch), "0", str(world)], timeout=3600)
        dense_bytes = res["n_users"] * res["n_items"] * 4
        peak_b = res["peak_rss_mb"] * 2**20
        out.append(row(BENCH, f"peak RSS, rank 0 of W={world}: {res['train_steps']} steps + eval of "
                              f"{res['eval_users']:,} users ({SHAPE}, hidden {hidden}, batch {batch})", peak_b, "B",
                       ratio=dense_bytes / peak_b, reference="dense |U|×|I| float32 matrix",
                       reference_bytes=dense_bytes, target=None, child_peak_rss_rusage_mb=child_peak,
                       met=bool(peak_b < mem_gb * 2**30), target_text=f"< {mem_gb} GB (this machine)", **res))
        print(f"[memory] W={world}: rank 0 holds {res['rank_users']:,} users, {res['rank_nnz']:,} non-zeros; "
              f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--child", nargs=8,
                   metavar=("DATASET", "FACTORS", "STEPS", "EVAL_USERS", "HIDDEN", "BATCH", "RANK", "WORLD"))
    a = p.parse_args()
    d, f, s, e, h, b, r, w = a.child
    print(json.dumps(child(d, f, int(s), int(e), int(h), int(b), int(r), int(w))))
