"""Per-rank memory of item-parallel LD4MRec on a large synthetic catalogue, at W_item = 1 and 4.

    python benchmarks/scale.py              # 2,000,000 items, B = 256, 3 steps
    python benchmarks/scale.py --quick      # the same catalogue, B = 32, 2 steps, 2 power iterations
    python benchmarks/scale.py --items 250000 --build whole   # the former path: build whole, then shard

Each W_item runs as W_item gloo processes (one item group, `benchmarks.harness.gloo_spawn`).
Every rank does what an item-parallel worker does, holding only its share:
1. V_k: `svd_dist.distributed_item_factors` over the synthetic train rows (U users with
   `--clicks` items each, uniform over the catalogue; the rows are the same on every rank
   of the item group), each rank keeping its slice of V_k;
2. the model: `parallel.build.build_sharded_model` (FC_in / FC_out on the meta device, the
   rank's shards drawn with the whole layers' law) with the slice's rows of a 384-wide
   text feature (N(0, 1), block-seeded: the same numbers whatever the layout) and of the
   item degrees; `--build whole` instead builds the whole model and data on every rank
   and shards it afterwards (the path before sharded construction);
3. `--steps` training steps (`item_parallel_step`, Adam) and one ranking pass
   (`item_parallel_topk`, k = 20, train items masked) over one batch.
Peak RSS is the process's own high-water mark (`getrusage`, ru_maxrss), taken per rank
at the end; a W_item's figure is its largest rank's. The last line printed is
`per-rank peak RSS W_item=1: … MiB, W_item=4: … MiB (ratio …)`; the lines of
`BEFORE_FINAL_LINE` print just before it: benchmarks/prepare_memory.py's (prepare's peak
RSS per interaction before → after, at its --quick sizes with --quick) unless --no-prepare.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ld4mrec_dist.model import LD4MRec
    from ld4mrec_dist.parallel.item import ItemLayout

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HIDDEN, SVD_RANK, TEXT_WIDTH, TOP_K, SEED = 64, 64, 384, 20, 2024
TEXT_KEY = 3  # `normal_rows` stream key of the synthetic text feature

def prepare_memory_lines(args: argparse.Namespace) -> list[str]:
    """benchmarks/prepare_memory.py's lines (prepare's peak RSS per interaction, before →
    after); none with --no-prepare."""
    if args.no_prepare:
        return []
    from benchmarks import prepare_memory

    return prepare_memory.run(args.quick)


BEFORE_FINAL_LINE: list[Callable[[argparse.Namespace], list[str]]] = [prepare_memory_lines]
"""Reporters of other memory figures: each is called with the parsed arguments after the
W_item runs, and its lines are printed before the final per-rank peak RSS line."""


def rss_mib() -> float:
    """This process's resident set now, MiB (Linux /proc)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """This process's peak resident set, MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_rows(n_users: int, n_items: int, clicks: int, seed: int):
    """The synthetic train matrix [U, I], scipy CSR float32: `clicks` distinct uniform items per user."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    cols = np.sort(rng.integers(0, n_items, (n_users, clicks)), axis=1)
    keep = np.concatenate([np.ones((n_users, 1), bool), cols[:, 1:] != cols[:, :-1]], axis=1)
    users = np.repeat(np.arange(n_users), clicks)[keep.ravel()]
    return sp.csr_matrix((np.ones(users.size, np.float32), (users, cols.ravel()[keep.ravel()])),
                         shape=(n_users, n_items))


def _batch(a, users: np.ndarray):
    import torch

    rows = a[users]
    return torch.sparse_csr_tensor(torch.from_numpy(rows.indptr.astype(np.int64)),
                                   torch.from_numpy(rows.indices.astype(np.int64)),
                                   torch.from_numpy(rows.data), size=rows.shape)


def _config(batch: int):
    from ld4mrec_dist.config import Config, ModelSection, TrainSection

    return Config(model=ModelSection(hidden=HIDDEN, svd_rank=SVD_RANK), train=TrainSection(batch_size=batch, seed=SEED))


def _build(opts: dict[str, Any], mesh: Any, a: Any, v_LK: np.ndarray) -> tuple[LD4MRec, ItemLayout]:
    """(model, layout): sharded construction, or the whole model sharded afterwards."""
    import torch

    from ld4mrec_dist.model import LD4MRec
    from ld4mrec_dist.parallel.build import build_sharded_model, mesh_item_range, normal_rows
    from ld4mrec_dist.parallel.item import shard_items

    n_items, cfg = opts["items"], _config(opts["batch"])
    degree_I = np.bincount(a.indices, minlength=n_items).astype(np.float32)
    if opts["build"] == "sharded":
        lo, hi = mesh_item_range(mesh, n_items)
        text = normal_rows(n_items, TEXT_WIDTH, lo, hi, SEED, TEXT_KEY)
        return build_sharded_model(cfg, a.shape[0], n_items, mesh, torch.from_numpy(v_LK), {"text": text},
                                   torch.from_numpy(degree_I[lo:hi]), torch.device("cpu"))
    torch.manual_seed(SEED)
    model = LD4MRec(cfg.model, cfg.diffusion, a.shape[0], n_items, item_factors=torch.from_numpy(v_LK),
                    item_features={"text": normal_rows(n_items, TEXT_WIDTH, 0, n_items, SEED, TEXT_KEY)},
                    item_degree=torch.from_numpy(degree_I))
    return model, shard_items(model, mesh)


def _rank(rank: int, world: int, opts: dict[str, Any]) -> dict[str, Any]:
    import torch

    from ld4mrec_dist.build import build_optimizers
    from ld4mrec_dist.dist import sampler_bytes_per_step, zin_bytes_per_step
    from ld4mrec_dist.parallel.build import mesh_item_range
    from ld4mrec_dist.parallel.comm import CollectiveBytes
    from ld4mrec_dist.parallel.item import item_mesh, item_parallel_step, item_param_groups, slice_generators
    from ld4mrec_dist.parallel.topk import item_parallel_topk
    from ld4mrec_dist.sampler import SamplerHistory
    from ld4mrec_dist.scaling_model import item_parallel_bytes_per_step
    from ld4mrec_dist.svd_dist import distributed_item_factors

    torch.set_num_threads(max(1, opts["threads"] // world))
    warnings.filterwarnings("ignore", message="To construct DTensor")  # torch's own, once per step
    out: dict[str, Any] = {"rss_start_mib": rss_mib()}
    mesh = item_mesh(1, world)
    n_items, batch = opts["items"], opts["batch"]
    a = train_rows(opts["users"], n_items, opts["clicks"], SEED)
    lo, hi = mesh_item_range(mesh, n_items)
    t0 = time.perf_counter()
    group = mesh.get_group("item") if world > 1 else None
    v = distributed_item_factors(a, SVD_RANK, SEED, opts["n_iter"], item_range=(lo, hi), item_group=group)
    if opts["build"] == "whole":  # the former path: every rank held all of V_k
        parts = [torch.empty(0)] * world
        import torch.distributed as tdist

        tdist.all_gather_object(parts, v)
        v = np.concatenate(parts)
    out["svd_s"], out["rss_after_svd_mib"] = time.perf_counter() - t0, rss_mib()
    t0 = time.perf_counter()
    model, layout = _build(opts, mesh, a, v)
    del v
    cfg = _config(batch)
    optimizers = build_optimizers(model, cfg, item_param_groups(model))
    out["build_s"], out["rss_after_build_mib"] = time.perf_counter() - t0, rss_mib()
    history = SamplerHistory.empty(model.schedule.steps, cfg.diffusion)
    generators = slice_generators(SEED, 0, layout, torch.device("cpu"))
    step_s, losses = [], []
    for step in range(opts["steps"]):
        users = (np.arange(batch) + step * batch) % a.shape[0]
        rows = _batch(a, users)
        t0 = time.perf_counter()
        with CollectiveBytes() as counted:  # the last step's bytes are reported
            loss = item_parallel_step(model, layout, optimizers, history, torch.from_numpy(users), rows, generators,
                                      cfg)
        step_s.append(time.perf_counter() - t0)
        losses.append(float(loss))
    out["step_bytes"] = counted.total
    out["formula_bytes"] = (sum(item_parallel_bytes_per_step(batch, HIDDEN, condition_width=SVD_RANK + TEXT_WIDTH)
                                .values()) + zin_bytes_per_step(world, batch, HIDDEN)
                            + sampler_bytes_per_step(1, batch))
    model.eval()
    users = np.arange(batch)
    rows = _batch(a, users)
    t0 = time.perf_counter()
    _, top = item_parallel_topk(model, layout, rows, torch.from_numpy(users), TOP_K, mask_BI=rows)
    out.update(step_s=step_s, losses=losses, rank_s=time.perf_counter() - t0, top_items=top.shape,
               slice=(lo, hi), peak_rss_mib=peak_rss_mib(), cpu_s=time.process_time())
    return out


# ---------------------------------------------------------------- the 10 M-item plan

PLAN_ITEMS, PLAN_USERS, PLAN_INTERACTIONS = 10_000_000, 100_000_000, 10_000_000_000
GPU_BYTES = 80e9  # H100 SXM
GPU_RESERVED = 4e9
"""Assumed: CUDA context, allocator slack and NCCL buffers per GPU."""

def internet_plan() -> list[str]:
    """The scaling model's figures for 10 M items × 100 M users × 10 B interactions at d = 256
    on H100s: memory per GPU, bytes per step, the step-time bound. Assumed rates: H100 bf16
    at 400 TFLOP/s effective, NVLink 4 inside a node of 8 GPUs, 400 Gbit/s EFA per GPU
    between nodes. z_in (one vector per user) is counted sharded by user over all W ranks."""
    import ld4mrec_dist.scaling_model as st

    shape = st.Shape("10M", PLAN_ITEMS, hidden=256, batch=256, svd_rank=64, feature_dims=(384, 4096),
                     nnz_per_user=PLAN_INTERACTIONS / PLAN_USERS)
    compute = st.Compute("h100-bf16", 1 / 400e12, 1 / 400e12, 2e-4, "assumed: ~40 % of 989 TFLOP/s dense bf16")
    nvlink, efa = st.NETWORKS["nvlink-h100"], st.Network("efa-400", 400.0, 20.0, "assumed: p5, 3,200 Gbit/s per 8 GPUs")
    zin_total = 12 * shape.hidden * PLAN_USERS  # z_in and SparseAdam's two dense moments, float32
    lines = [f"plan: {PLAN_ITEMS:,} items × {PLAN_USERS:,} users × {PLAN_INTERACTIONS:,} interactions, d = 256, "
             f"B = 256 per item group, text 384 + image 4096 features, H100 80 GB ({GPU_RESERVED / 1e9:.0f} GB "
             f"reserved); z_in with its Adam moments {zin_total / 1e9:.0f} GB, counted sharded by user over all W"]
    for data, group in ((1, 4), (1, 8), (1, 16), (1, 32), (1, 64), (2, 8), (8, 8)):
        world = group * data
        model_b = st.memory_per_rank("item_parallel", shape, group)
        need = model_b + zin_total / world + GPU_RESERVED
        colls = st.collectives("item_parallel", shape, world, item_group=group)

        def link(c: st.Collective, group: int = group, world: int = world) -> st.Network:
            inside = (c.group == group and group <= 8 and not c.name.startswith(("C-Net", "z_in", "sampler"))) \
                or world <= 8
            return nvlink if inside else efa

        comm = sum(st.collective_time(c, world, link(c)) for c in colls)
        comp = compute.step_s(shape, "item_parallel", group)
        users_s = data * shape.batch / (comp + comm)
        lines.append(f"plan: W = {world:3d} ({data} data × {group} item): {need / 1e9:5.1f} GB per GPU "
                     f"({'fits' if need <= GPU_BYTES else 'does not fit'}; C-Net + its Adam + buffers + activations "
                     f"{model_b / 1e9:.1f}), {sum(c.nbytes for c in colls) / 1e6:7.1f} MB per step per GPU, "
                     f"step ≥ {(comp + comm) * 1e3:6.1f} ms (compute {comp * 1e3:.1f}, comm {comm * 1e3:.1f}), "
                     f"{users_s:,.0f} users/s, epoch {PLAN_USERS / users_s / 3600:.2f} h")
    return lines


def run_world(world: int, opts: dict[str, Any]) -> list[dict[str, Any]]:
    """The ranks' reports of one W_item run. Each process gets threads / W BLAS threads (the
    spawned processes read these variables when NumPy loads): more would oversubscribe."""
    import os

    from benchmarks.harness import free_port, gloo_spawn

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(max(1, opts["threads"] // world))
    return gloo_spawn(_rank, world, (opts,), free_port())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="B = 32, 2 steps, 2 power iterations (a shared 23 GB, 2-core machine runs W_item = 1)")
    parser.add_argument("--items", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=None, help="users per step (default 256; --quick 32)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 3; --quick 2)")
    parser.add_argument("--users", type=int, default=4096)
    parser.add_argument("--clicks", type=int, default=20, help="train items per synthetic user")
    parser.add_argument("--n-iter", type=int, default=None, help="power iterations of the SVD (default 4, "
                        "the trainer's; --quick 2)")
    parser.add_argument("--worlds", default="1,4", help="W_item values, the first the reference")
    parser.add_argument("--build", choices=("sharded", "whole"), default="sharded")
    parser.add_argument("--plan-only", action="store_true", help="print the 10 M-item plan and stop")
    parser.add_argument("--no-prepare", action="store_true",
                        help="leave out benchmarks/prepare_memory.py's lines (prepare's peak RSS per interaction)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per W_item run, split over its ranks")
    args = parser.parse_args(argv)
    if args.plan_only:
        print("\n".join(internet_plan()))
        return
    batch = args.batch or (32 if args.quick else 256)
    steps = args.steps or (2 if args.quick else 3)
    opts = {"items": args.items, "batch": batch, "steps": steps, "users": args.users, "clicks": args.clicks,
            "n_iter": args.n_iter or (2 if args.quick else 4), "build": args.build, "threads": args.threads}
    worlds = [int(w) for w in args.worlds.split(",")]
    print(f"catalogue {args.items:,} items, d = {HIDDEN}, K = {SVD_RANK}, text {TEXT_WIDTH} wide, B = {batch}, "
          f"{args.users:,} users × {args.clicks} clicks, {steps} steps + 1 ranking pass, build {args.build}",
          flush=True)
    peaks: dict[int, float] = {}
    for world in worlds:
        t0 = time.perf_counter()
        ranks = run_world(world, opts)
        peaks[world] = max(r["peak_rss_mib"] for r in ranks)
        r0 = ranks[0]
        per_rank = ", ".join(f"{r['peak_rss_mib']:.0f}" for r in ranks)
        print(f"W_item={world}: peak RSS per rank {per_rank} MiB; "
              f"rank 0 RSS after SVD {r0['rss_after_svd_mib']:.0f}, after build {r0['rss_after_build_mib']:.0f} MiB; "
              f"SVD {r0['svd_s']:.1f}s, build {r0['build_s']:.1f}s, steps "
              f"{', '.join(f'{s:.1f}' for s in r0['step_s'])}s (loss {', '.join(f'{x:.3e}' for x in r0['losses'])}), "
              f"ranking {r0['rank_s']:.1f}s; collectives {r0['step_bytes']:,} B/step/rank"
              + (f" (formula {r0['formula_bytes']:,})" if world > 1 else "")
              + f"; wall {time.perf_counter() - t0:.0f}s, rank 0 CPU {r0['cpu_s']:.0f}s",
              flush=True)
    for line in internet_plan():
        print(line, flush=True)
    for reporter in BEFORE_FINAL_LINE:
        for extra in reporter(args):
            print(extra, flush=True)
    ref, *others = worlds
    print(f"per-rank peak RSS W_item={ref}: {peaks[ref]:.0f} MiB"
          + "".join(f", W_item={w}: {peaks[w]:.0f} MiB (ratio {peaks[w] / peaks[ref]:.2f})" for w in others),
          flush=True)


if __name__ == "__main__":
    main()
