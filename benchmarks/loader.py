"""(2) The loader alone: Parquet shards → dense minibatches per second, at the `baby` shape.

What a worker does, without the model: read its rows (Ray Data `iter_batches` of the
materialized train dataset, or plain pyarrow), `rows_from_arrow` → one CSR RowStore,
then per step: slice a permuted minibatch, `to_torch_csr`, densify (`.to_dense()`, what
the model's `_inputs` does). Rate = minibatches / (read + all batches), one epoch, one
thread (as a 0.5-CPU Ray worker). Reference: the training step rate of the 1-worker full
path measured by `throughput` in the same run (else the ideal loop's).
"""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import torch

from benchmarks.common import Context, dataset_path, row

BENCH = "loader"
SHAPE = "baby"
BATCH = 256


def epoch_batches(store, batch: int, seed: int = 0) -> tuple[int, float]:
    """(batches, seconds) of one epoch of dense minibatches from a RowStore."""
    from ld4mrec_dist.rows import epoch_order, minibatches, to_torch_csr

    t0 = time.perf_counter()
    n = 0
    for users_B, rows in minibatches(store, epoch_order(len(store), seed, 0, 0), batch, len(store)):
        torch.from_numpy(users_B)
        x_BI = to_torch_csr(rows).to_dense()
        n += 1
    assert x_BI.dim() == 2
    return n, time.perf_counter() - t0


def read_pyarrow(files: list[str], n_items: int):
    from ld4mrec_dist.rows import concat_row_stores, rows_from_arrow

    stores = [rows_from_arrow(pq.read_table(f), n_items) for f in files]
    return concat_row_stores(stores, n_items)


def read_ray_data(materialized, n_items: int):
    from ld4mrec_dist.rows import concat_row_stores, rows_from_arrow

    stores = [rows_from_arrow(b, n_items) for b in materialized.iter_batches(batch_size=8192, batch_format="pyarrow")]
    return concat_row_stores(stores, n_items)


def run(ctx: Context) -> list[dict]:
    import ray.data

    from data_pipeline.dataset import open_dataset

    ds = open_dataset(dataset_path(SHAPE, ctx.data_root))
    files = ds.split_files("train")
    reference = ctx.notes.get("train_steps_per_s_1w")
    ref_name = "training steps/s, 1-worker full path"
    if reference is None:
        reference, ref_name = ctx.notes.get("ideal_steps_per_s"), "training steps/s, ideal loop"
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    out = []
    try:
        repeats = 1 if ctx.quick else 3
        for source in ("pyarrow", "ray_data"):
            best = None
            for rep in range(repeats):
                t0 = time.perf_counter()
                if source == "pyarrow":
                    store = read_pyarrow(files, ds.n_items)
                else:
                    mat = ray.data.read_parquet(files).materialize()  # as make_torch_trainer does, once
                    t0 = time.perf_counter()
                    store = read_ray_data(mat, ds.n_items)
                read_s = time.perf_counter() - t0
                n, batch_s = epoch_batches(store, BATCH, seed=rep)
                rate = n / (read_s + batch_s)
                if best is None or rate > best[0]:
                    best = (rate, read_s, batch_s, n)
            assert best is not None  # at least one repetition ran
            rate, read_s, batch_s, n = best
            out.append(row(BENCH, f"loader: {source} → RowStore → dense [{BATCH}, {ds.n_items}] batches",
                           rate, "batches/s", ratio=(rate / reference) if reference else None,
                           reference=ref_name, target=5.0, read_s=read_s, batches_s=batch_s, batches=n,
                           steady_batches_per_s=n / batch_s, rows=len(store), reference_steps_per_s=reference,
                           shape=SHAPE))
    finally:
        torch.set_num_threads(prev)
    return out
