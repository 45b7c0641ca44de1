"""(2) The loader alone: Parquet shards → dense minibatches per second, at the `baby` shape.

What a worker does, without the model: read its rows — the trainer's one data path,
`partition.read_rank_rows` (its users' train/valid/test rows through pyarrow, rank 0 of
W = 1 and of W = 2) — then per step: slice a permuted minibatch, `to_torch_csr`, densify
(`.to_dense()`, what the model does). For comparison, the path the trainer used before:
Ray Data `iter_batches` of the materialized train split → one CSR row store. Rate =
minibatches / (read + all batches), one epoch, one thread (as a 0.5-CPU Ray worker).
Reference: the training step rate of the 1-worker full path measured by `throughput` in
the same run (else the ideal loop's).
"""

from __future__ import annotations

import time

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


def read_ray_data(materialized, n_items: int):
    """The former Ray Data path: Arrow batches of user rows → one CSR row store, by user."""
    import numpy as np
    import pyarrow.compute as pc
    import scipy.sparse as sp

    from ld4mrec_dist.rows import RowStore

    users, rows = [], []
    for table in materialized.iter_batches(batch_size=8192, batch_format="pyarrow"):
        items = table.column("items").combine_chunks()
        indices = pc.list_flatten(items).to_numpy(zero_copy_only=False).astype(np.int32)
        indptr = np.concatenate([[0], np.cumsum(pc.list_value_length(items).to_numpy(zero_copy_only=False))])
        users.append(table.column("user").to_numpy().astype(np.int64))
        rows.append(sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr),
                                  shape=(len(users[-1]), n_items)))
    user_R = np.concatenate(users)
    order = np.argsort(user_R, kind="stable")
    return RowStore(user_R[order], sp.vstack(rows, format="csr")[order])


def run(ctx: Context) -> list[dict]:
    import ray.data

    from data_pipeline.dataset import open_dataset
    from ld4mrec_dist.partition import read_rank_rows

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
        for source in ("rank rows W=1", "rank rows W=2", "ray_data (former path)"):
            best = None
            for rep in range(repeats):
                t0 = time.perf_counter()
                if source.startswith("rank rows"):
                    store = read_rank_rows(ds, 0, int(source[-1])).train_store()
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
