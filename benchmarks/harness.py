"""In-process harnesses built from the trainer's own pieces (no copy of the model code).

Shapes: B users per step, I items, D hidden, U users.

- `ideal_steps`: LD4MRec forward / backward / Adam+SparseAdam on batches sliced from one
  pre-densified in-memory tensor [U, I] in a plain loop (the reference of throughput).
- `profiled_steps`: the training loop's own step function (`step.train_step`) and
  batch feed (`rows.torch_minibatches`), timed piece by piece through the step's timer:
  data (RowStore slice → torch CSR), forward (densify, encoders, C-Net, loss), backward
  (+ DDP all-reduce), z_in sync, optimizer, history (gather + update). With W > 1
  (gloo) the collectives are timed too.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch


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


def profiled_steps(model, opts, store, cfg, steps: int, warmup: int = 3, cnet=None,
                   bf16: bool = False) -> dict[str, Any]:
    """The loop's own step (`step.train_step`, fed by `rows.torch_minibatches`), timed
    piece by piece through its timer. Returns seconds per step of each piece."""
    from ld4mrec_dist import dist
    from ld4mrec_dist.rows import epoch_order, torch_minibatches
    from ld4mrec_dist.sampler import SamplerHistory
    from ld4mrec_dist.step import train_step
    from ld4mrec_dist.timing import PieceTimer

    device = model.device
    cnet = cnet or model.cnet
    batch = cfg.train.batch_size
    sampler = SamplerHistory.empty(model.schedule.steps, cfg.diffusion)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    n_rows = dist.all_reduce_min_int(len(store), device)
    model.train()
    timer = PieceTimer()
    done, t_start = 0, None
    while done < warmup + steps:
        order = epoch_order(len(store), cfg.train.seed, done, dist.rank())
        # full batches only: every timed step has the same shape
        batches = torch_minibatches(store, order, batch, n_rows - n_rows % batch, device, timer)
        for users_B, rows_BI in batches:
            if done == warmup + steps:
                break
            if done == warmup:
                _sync(str(device))
                timer, t_start = PieceTimer(), time.perf_counter()
            train_step(model, cnet, opts, sampler, users_B, rows_BI, gen, cfg, autocast=bf16, timer=timer)
            _sync(str(device))
            done += 1
    assert t_start is not None, "no timed step ran"
    wall = time.perf_counter() - t_start
    return {"step_s": wall / steps, "users_per_s": batch * steps / wall,
            "pieces_s": {k: v / steps for k, v in timer.total.items()}, "steps": steps}


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
