"""(6) Communication per training step, counted exactly in 2 gloo processes, per gradient strategy.

Analytic: `ld4mrec_dist.scaling_model.collectives` (the scaling model): DDP all-reduces C-Net's
float32 gradients (every parameter but z_in: its size depends on |I|, D and the feature
widths, not on |U|), `ddp_bf16` half of that, `powersgd` the rank-r factors plus the
uncompressed tensors; the z_in rows (`dist.zin_bytes_per_step`) and the sampler history
(`dist.sampler_bytes_per_step`) depend on W, B and D only. Beside them: the |U|×D z_in
table, whose dense gradient a naive DDP wrap would all-reduce every step.
Measured: 2 gloo processes build LD4MRec at each shape (random item features of the real
widths: the bytes depend on shapes only), wrapped by the trainer's `wrap_cnet` with the
strategy's hook, and run the loop's step (`train_step`); a wrapper around
`torch.distributed.all_reduce` (which the hooks call) counts the bytes and calls of the
gradient all-reduces, one around `all_gather` those of z_in and the sampler. Plain `ddp`
is counted through torch's `allreduce_hook`, documented as DDP's own all-reduce.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.common import Context, row
from benchmarks.harness import free_port, gloo_spawn

BENCH = "communication"
SHAPES = {  # users, items, text width, image width (data_pipeline.synthetic.SHAPES)
    "baby": (19_445, 7_050, 384, 4096),
    "sports": (35_598, 18_357, 384, 4096),
    "electronics": (192_403, 63_001, 384, 4096),
}
WORLD, BATCH, HIDDEN = 2, 256, 256
MEASURED_STRATEGIES = ("ddp", "ddp_bf16", "powersgd")
START_ITER = 2  # PowerSGD's plain steps in the measurement (torch's minimum with error feedback)


def random_features(n_items: int, d_text: int, d_image: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"text": torch.randn(n_items, d_text, generator=g), "image": torch.randn(n_items, d_image, generator=g)}


def build_model(n_users: int, n_items: int, features: dict[str, torch.Tensor], hidden: int = HIDDEN):
    """LD4MRec at a shape, with the given (random) item features; the same init on every rank."""
    from ld4mrec_dist.config import DiffusionSection, ModelSection
    from ld4mrec_dist.model import LD4MRec

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return LD4MRec(ModelSection(hidden=hidden), DiffusionSection(), n_users, n_items,
                   item_factors=torch.randn(n_items, 64, generator=g) / 64, item_features=features,
                   item_degree=torch.full((n_items,), 5.0))


def random_batch(rng, n_users: int, n_items: int, batch: int, nnz_per_user: float):
    """(users [B] int64, torch CSR rows [B, I] of ones): a batch of the shape's density."""
    import numpy as np
    import scipy.sparse as sp

    from ld4mrec_dist.rows import to_torch_csr

    users = np.sort(rng.choice(n_users, batch, replace=False))
    rows = sp.random(batch, n_items, density=nnz_per_user / n_items, format="csr", random_state=rng,
                     dtype=np.float32)
    rows.data[:] = 1.0
    return torch.from_numpy(users), to_torch_csr(rows)


def _rank(rank: int, world: int, shape: tuple, steps: int, strategies: tuple[str, ...]) -> dict[str, Any]:
    """Per strategy: mean bytes / calls per step of each collective, after the warm-up steps."""
    import numpy as np
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    from ld4mrec_dist import strategy as st
    from ld4mrec_dist.build import build_optimizers, wrap_cnet
    from ld4mrec_dist.config import Config, ModelSection
    from ld4mrec_dist.sampler import SamplerHistory
    from ld4mrec_dist.step import train_step

    n_users, n_items, d_text, d_image = shape
    features = random_features(n_items, d_text, d_image)
    counts = {"allreduce": 0, "allreduce_calls": 0, "allgather": 0, "allgather_calls": 0}
    real_all_reduce, real_all_gather = dist.all_reduce, dist.all_gather

    def counting_all_reduce(tensor, *a, **k):
        counts["allreduce"] += tensor.numel() * tensor.element_size()
        counts["allreduce_calls"] += 1
        return real_all_reduce(tensor, *a, **k)

    def counting_all_gather(out_list, tensor, *a, **k):
        counts["allgather"] += sum(t.numel() * t.element_size() for t in out_list)
        counts["allgather_calls"] += 1
        return real_all_gather(out_list, tensor, *a, **k)

    cfg = Config(model=ModelSection(hidden=HIDDEN))
    cfg.train.batch_size = BATCH
    out: dict[str, Any] = {}
    dist.all_reduce, dist.all_gather = counting_all_reduce, counting_all_gather  # type: ignore[assignment]
    try:
        for name in strategies:
            model = build_model(n_users, n_items, features)
            if name == "ddp":  # count DDP's own all-reduce through torch's equivalent Python hook
                cnet = wrap_cnet(model, torch.device("cpu"))
                cnet.register_comm_hook(None, default_hooks.allreduce_hook)  # type: ignore[operator]
            else:
                from torch.nn.parallel import DistributedDataParallel

                cnet = DistributedDataParallel(model.cnet)  # = wrap_cnet(…, strategy=name), START_ITER plain steps
                st.register_comm_hook(cnet, name, start_iter=START_ITER)
            opts = build_optimizers(model, cfg)
            history = SamplerHistory.empty(model.schedule.steps, cfg.diffusion)
            rng = np.random.default_rng(rank)
            gen = torch.Generator().manual_seed(rank)
            per_step, t_steps = [], []
            for _ in range(steps):
                users, rows = random_batch(rng, n_users, n_items, BATCH, 9.0)
                before = dict(counts)
                t0 = time.perf_counter()
                train_step(model, cnet, opts, history, users, rows, gen, cfg)
                t_steps.append(time.perf_counter() - t0)
                per_step.append({k: counts[k] - before[k] for k in counts})
            later = per_step[START_ITER + 1:]  # DDP rebuilds its buckets after step 1; PowerSGD starts at START_ITER
            out[name] = {**{k: sum(s[k] for s in later) / len(later) for k in later[0]},
                         "step_s": sum(t_steps[START_ITER + 1:]) / len(later), "steps_measured": len(later)}
            del cnet, model, opts
    finally:
        dist.all_reduce, dist.all_gather = real_all_reduce, real_all_gather
    return out


def measure(shape_name: str, steps: int, strategies: tuple[str, ...] = MEASURED_STRATEGIES) -> dict[str, Any]:
    """Bytes and calls per step of each strategy at `shape_name`, counted on rank 0 of 2 gloo processes."""
    assert steps > START_ITER + 1, "need steps after the warm-up"
    return gloo_spawn(_rank, WORLD, (SHAPES[shape_name], steps, strategies), free_port())[0]


def predicted(shape_name: str, strategy: str) -> dict[str, float]:
    """The scaling model's bytes and calls per step at W = 2 (gradients, all-gathers)."""
    from ld4mrec_dist import scaling_model

    colls = scaling_model.collectives(strategy, scaling_model.SHAPES[shape_name], WORLD)
    grads = [c for c in colls if c.kind == "all_reduce"]
    gathers = [c for c in colls if c.kind == "all_gather"]
    return {"allreduce": sum(c.nbytes for c in grads), "allreduce_calls": sum(c.calls for c in grads),
            "allgather": sum(c.nbytes for c in gathers), "allgather_calls": sum(c.calls for c in gathers)}


def run(ctx: Context) -> list[dict]:
    out = []
    measured = {}
    for name in ("baby", "electronics"):
        shape = SHAPES[name]
        res = measure(name, 4 if ctx.quick else 6, ("ddp",))["ddp"]
        measured[name] = res
        a = predicted(name, "ddp")
        common = {"shape": name, "users": shape[0], "items": shape[1], "world": WORLD, "batch": BATCH,
                  "hidden": HIDDEN}
        out.append(row(BENCH, f"{name}: gradients all-reduced per step (DDP, C-Net)", res["allreduce"], "B",
                       analytic_bytes=a["allreduce"], calls=res["allreduce_calls"],
                       analytic_calls=a["allreduce_calls"], step_s=res["step_s"], **common))
        out.append(row(BENCH, f"{name}: z_in rows + sampler history all-gathered per step", res["allgather"], "B",
                       analytic_bytes=a["allgather"], **common))
        out.append(row(BENCH, f"{name}: dense z_in gradient a naive DDP wrap would all-reduce",
                       shape[0] * HIDDEN * 4, "B", **common))
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
