"""In-process harnesses built from the trainer's own pieces (no copy of the model code).

Shapes: B users per step, I items, D hidden, U users.

- `ideal_steps`: LD4MRec forward / backward / Adam+SparseAdam on batches sliced from one
  pre-densified in-memory tensor [U, I] in a plain loop (the reference of throughput).
- `profiled_steps`: the step of `train_loop_per_worker`, piece by piece and timed: rows
  slicing from the RowStore, `to_torch_csr`, densify (the model's `_inputs`, timed on
  the side), sampler (p_t + history update + gather), forward, backward, z_in sync,
  optimizer. With W > 1 (gloo) the collectives are timed too.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import Timer


def make_config(dataset: str, overrides: list[str] | None = None):
    from ld4mrec_dist.config import load_config

    return load_config(None, [f"data.path={dataset}", *(overrides or [])])


def build(cfg, ds, v_IK: np.ndarray, device: str = "cpu"):
    """(model, (adam, sparse_adam)) exactly as the worker builds them (before DDP)."""
    from ld4mrec_dist.build import build_model, build_optimizers

    model = build_model(cfg, ds, v_IK, torch.device(device))
    return model, build_optimizers(model, cfg)


def _autocast(device: str, bf16: bool):
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def ideal_steps(model, opts, x_UI: torch.Tensor, users_U: torch.Tensor, batch: int, steps: int,
                warmup: int = 3, seed: int = 0, bf16: bool = False) -> dict[str, float]:
    """users/s of forward+backward+step on dense slices of `x_UI` (already on the device)."""
    device = str(model.device)
    gen = torch.Generator(device=model.device).manual_seed(seed)
    order = torch.randperm(x_UI.shape[0], generator=torch.Generator().manual_seed(seed))
    model.train()
    n = x_UI.shape[0]

    def one(i: int) -> None:
        start = (i * batch) % max(n - batch, 1)
        idx = order[start:start + batch].to(x_UI.device)
        with _autocast(device, bf16):
            out = model(x_UI[idx], users_U[idx], generator=gen)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        out.loss.backward()
        for opt in opts:
            opt.step()

    for i in range(warmup):
        one(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        one(warmup + i)
    _sync(device)
    wall = time.perf_counter() - t0
    return {"users_per_s": steps * batch / wall, "step_s": wall / steps, "steps": steps}


def profiled_steps(model, opts, store, cfg, steps: int, warmup: int = 3, ddp_model=None,
                   bf16: bool = False) -> dict[str, Any]:
    """The loop's step, timed piece by piece. Returns seconds per step of each piece."""
    from ld4mrec_dist import dist as sync
    from ld4mrec_dist.rows import epoch_order, minibatches, to_torch_csr
    from ld4mrec_dist.sampler import init_history, step_probabilities, update_history

    device = str(model.device)
    ddp_model = ddp_model or model.cnet
    batch = cfg.train.batch_size
    table, counts = init_history(cfg.diffusion.steps, cfg.diffusion.history)
    gen = torch.Generator(device=model.device).manual_seed(cfg.train.seed)
    n_rows = sync.all_reduce_min_int(len(store), model.device)
    model.train()
    timer = Timer()
    done, t_start = 0, None
    while done < warmup + steps:
        order = epoch_order(len(store), cfg.train.seed, done, sync.rank())
        it = minibatches(store, order, batch, n_rows - n_rows % batch)  # full batches only
        while done < warmup + steps:
            if done == warmup:
                timer, t_start = Timer(), time.perf_counter()
                _sync(device)
            with timer("1 rows: slice RowStore (scipy)"):
                nxt = next(it, None)
                if nxt is None:
                    break
                users_np, rows = nxt
                users_B = torch.from_numpy(users_np).to(device)
            with timer("2 to_torch_csr"):
                rows_BI = to_torch_csr(rows, device)
            with timer("3 densify (model._inputs, measured aside)"):
                model._inputs(rows_BI)
                _sync(device)
            with timer("4 sampler: p_t"):
                p_T = step_probabilities(table, counts, cfg.diffusion.uniform_floor,
                                         enabled=cfg.diffusion.importance_sampling)
            with timer("5 forward (incl. densify, encoders)"):
                with _autocast(device, bf16):
                    out = model(rows_BI, users_B, step_probs=p_T, generator=gen, cnet=ddp_model)
                finite = bool(torch.isfinite(out.loss))
                _sync(device)
            assert finite
            with timer("6 backward (+ DDP all-reduce)"):
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                out.loss.backward()
                _sync(device)
            with timer("7 z_in sync (all_gather)"):
                sync.synced_sparse_grad(model.z_in.weight, batch)
            with timer("8 optimizer step"):
                for opt in opts:
                    opt.step()
                _sync(device)
            with timer("9 sampler: gather + update history"):
                t_N, loss_N = sync.gather_step_losses(out.t, out.rec_loss, batch)
                table, counts = update_history(table, counts, t_N, loss_N)
            with timer("10 loss.item()"):
                out.loss.item()
            done += 1
    assert t_start is not None, "no timed step ran"
    wall = time.perf_counter() - t_start
    pieces = {k: v / steps for k, v in sorted(timer.total.items(), key=lambda kv: int(kv[0].split()[0]))}
    step_s = (wall - timer.total.get("3 densify (model._inputs, measured aside)", 0.0)) / steps
    return {"step_s": step_s, "users_per_s": batch / step_s, "pieces_s": pieces, "steps": steps}


# ---------------------------------------------------------------- 2-process gloo


def gloo_spawn(fn, world: int, args: tuple, port: int) -> list[Any]:
    """Run `fn(rank, world, *args)` in `world` gloo processes; their return values by rank."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_gloo_entry, args=(fn, r, world, port, queue, args)) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    for _ in procs:
        rank, value = queue.get(timeout=1800)
        results[rank] = value
    for p in procs:
        p.join(timeout=120)
    errors = [v for v in results.values()
              if isinstance(v, BaseException) or (isinstance(v, str) and v.startswith("ERROR"))]
    if errors:
        raise RuntimeError(str(errors[0]))
    return [results[r] for r in range(world)]


def _gloo_entry(fn, rank, world, port, queue, args):
    import traceback

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        value = fn(rank, world, *args)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to the parent
        value = "ERROR " + traceback.format_exc()
    queue.put((rank, value))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
