"""(6) Communication per training step: Baby vs Electronics shapes, W = 2 ranks.

Analytic: DDP all-reduces C-Net's float32 gradients (every parameter but z_in: its size
depends on |I|, D and the feature widths, not on |U|); `sync.zin_bytes_per_step` (the
batch's z_in rows, all-gathered) and `sync.sampler_bytes_per_step` (t, L_rec of every
rank) depend on W, B and D only. Beside them: the |U|×D z_in table, whose dense gradient
a naive DDP wrap would all-reduce every step.
Measured: 2 gloo processes build LD4MRec at each shape (random item features of the real
widths: the bytes depend on shapes only), wrapped by the trainer's `wrap_cnet`, and run
the loop's step; a DDP comm hook counts the gradient bytes all-reduced and a wrapper
counts the bytes `torch.distributed.all_gather` receives.
"""

from __future__ import annotations

import time
from typing import cast

import torch

from benchmarks.common import Context, row
from benchmarks.harness import free_port, gloo_spawn

BENCH = "communication"
SHAPES = {  # users, items, text width, image width (data_pipeline.synthetic.SHAPES)
    "baby": (19_445, 7_050, 384, 4096),
    "electronics": (192_403, 63_001, 384, 4096),
}
WORLD, BATCH, HIDDEN = 2, 256, 256


def build_model(n_users: int, n_items: int, d_text: int, d_image: int):
    from ld4mrec_dist.config import DiffusionSection, ModelSection
    from ld4mrec_dist.model import LD4MRec

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    feats = {"text": torch.randn(n_items, d_text, generator=g), "image": torch.randn(n_items, d_image, generator=g)}
    return LD4MRec(ModelSection(hidden=HIDDEN), DiffusionSection(), n_users, n_items,
                   item_factors=torch.randn(n_items, 64, generator=g) / 64, item_features=feats,
                   item_degree=torch.full((n_items,), 5.0))


def analytic(n_users: int, model) -> dict:
    """Bytes per step from the parameter count and sync's formulas (W, B, D fixed above)."""
    from ld4mrec_dist import dist as sync
    from ld4mrec_dist.build import dense_parameters

    grad = sum(p.numel() * 4 for p in dense_parameters(model))
    zin = sync.zin_bytes_per_step(WORLD, BATCH, HIDDEN)
    sampler = sync.sampler_bytes_per_step(WORLD, BATCH)
    return {"grad_bytes": grad, "ring_wire_bytes_per_rank": grad * 2 * (WORLD - 1) / WORLD,
            "zin_bytes": zin, "sampler_bytes": sampler, "total_bytes": grad + zin + sampler,
            "zin_table_bytes": n_users * HIDDEN * 4}


def _rank(rank: int, world: int, shape: tuple, steps: int) -> dict:
    import numpy as np
    import scipy.sparse as sp
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ld4mrec_dist import dist as sync
    from ld4mrec_dist.build import dense_parameters, wrap_cnet
    from ld4mrec_dist.rows import to_torch_csr
    from ld4mrec_dist.sampler import init_history, update_history

    n_users, n_items, d_text, d_image = shape
    model = build_model(*shape)
    ddp = wrap_cnet(model, torch.device("cpu"))
    adam, sparse_adam = torch.optim.Adam(dense_parameters(model)), \
        torch.optim.SparseAdam([model.z_in.weight])
    counts = {"allreduce": 0, "allgather": 0, "allreduce_s": 0.0, "allgather_s": 0.0}

    def hook(state, bucket):
        buf = bucket.buffer()
        counts["allreduce"] += buf.numel() * buf.element_size()
        t0 = time.perf_counter()
        buf.div_(world)
        dist.all_reduce(buf)  # synchronous: lets us time it (DDP's default overlaps it)
        counts["allreduce_s"] += time.perf_counter() - t0
        fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        fut.set_result(buf)
        return fut

    cast(DistributedDataParallel, ddp).register_comm_hook(None, hook)  # 2 ranks: wrap_cnet wrapped it
    real_all_gather = dist.all_gather

    def counting_all_gather(out_list, tensor, *a, **k):
        t0 = time.perf_counter()
        res = real_all_gather(out_list, tensor, *a, **k)
        counts["allgather"] += sum(t.numel() * t.element_size() for t in out_list)
        counts["allgather_s"] += time.perf_counter() - t0
        return res

    dist.all_gather = counting_all_gather  # type: ignore[assignment]  # counted for this measurement only
    rng = np.random.default_rng(rank)
    table, hist_counts = init_history(5, 10)
    per_step, t_steps = [], []
    for _ in range(steps):
        before = dict(counts)
        t0 = time.perf_counter()
        users = np.sort(rng.choice(n_users, BATCH, replace=False))
        rows = sp.random(BATCH, n_items, density=9 / n_items, format="csr", random_state=rng, dtype=np.float32)
        rows.data[:] = 1.0
        out = model(to_torch_csr(rows), torch.from_numpy(users), cnet=ddp)
        for opt in (adam, sparse_adam):
            opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sync.synced_sparse_grad(model.z_in.weight, BATCH)
        adam.step()
        sparse_adam.step()
        t_N, loss_N = sync.gather_step_losses(out.t, out.rec_loss, BATCH)
        table, hist_counts = update_history(table, hist_counts, t_N, loss_N)
        t_steps.append(time.perf_counter() - t0)
        per_step.append({k: counts[k] - before[k] for k in counts})
    dist.all_gather = real_all_gather
    later = per_step[1:]  # the first step builds DDP's buckets
    mean = {k: sum(s[k] for s in later) / len(later) for k in later[0]}
    return {**mean, "step_s": sum(t_steps[1:]) / len(later), "analytic": analytic(n_users, model)}


def run(ctx: Context) -> list[dict]:
    out = []
    measured = {}
    for name, shape in SHAPES.items():
        res = gloo_spawn(_rank, WORLD, (shape, 3 if ctx.quick else 6), free_port())[0]
        measured[name] = res
        a = res["analytic"]
        common = {"shape": name, "users": shape[0], "items": shape[1], "world": WORLD, "batch": BATCH,
                  "hidden": HIDDEN, **a}
        out.append(row(BENCH, f"{name}: gradients all-reduced per step (DDP, C-Net)", res["allreduce"], "B",
                       analytic_bytes=a["grad_bytes"], allreduce_s=res["allreduce_s"], step_s=res["step_s"], **common))
        out.append(row(BENCH, f"{name}: z_in rows + sampler history all-gathered per step", res["allgather"], "B",
                       analytic_bytes=a["zin_bytes"] + a["sampler_bytes"], allgather_s=res["allgather_s"], **common))
        out.append(row(BENCH, f"{name}: dense z_in gradient a naive DDP wrap would all-reduce", a["zin_table_bytes"],
                       "B", **common))
    b, e = measured["baby"], measured["electronics"]
    users_ratio = SHAPES["electronics"][0] / SHAPES["baby"][0]
    gather_ratio = e["allgather"] / max(b["allgather"], 1)
    out.append(row(BENCH, "electronics/baby: z_in + sampler bytes per step (measured)", gather_ratio, "×",
                   users_ratio=users_ratio, met=bool(abs(gather_ratio - 1.0) < 1e-9),
                   target_text=f"1× (|U| grows {users_ratio:.1f}×)"))
    tot = lambda m: m["allreduce"] + m["allgather"]  # noqa: E731
    items_ratio = SHAPES["electronics"][1] / SHAPES["baby"][1]
    out.append(row(BENCH, "electronics/baby: all bytes per step (measured; gradients follow |I|, not |U|)",
                   tot(e) / tot(b), "×", users_ratio=users_ratio, items_ratio=items_ratio,
                   met=bool(tot(e) / tot(b) < users_ratio), target_text=f"< |U| ratio {users_ratio:.1f}×"))
    return out
