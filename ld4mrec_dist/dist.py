"""The collectives of the training loop; each one is a no-op in a single process.

Shapes: B the per-rank batch capacity (train.batch_size), W the world size, D hidden,
R a rank's gradient rows, N = W·B gathered pairs. The design is docs/design.md §6.

Three things cross ranks besides DDP's gradient all-reduce:
- the importance-sampling history: every rank's (t, L_rec) values are gathered in rank
  order and every rank applies the same pure update, so the tables stay bitwise equal;
- the per-user z_in rows: z_in lives outside DDP (its dense gradient would be |U| × D);
  each rank gathers the batch's (user, gradient row) pairs of every rank and applies the
  same sparse update, so a step moves W·B·(D·4 + 8) bytes whatever |U|;
- metric sums: one all-reduce per evaluation.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


def stream_seed(*key: int) -> int:
    """The seed of a random stream named by integers, e.g. (seed, epoch, rank): every rank
    derives its own streams, and a resume at an epoch boundary derives the same ones again."""
    return int(np.random.default_rng(list(key)).integers(2**62))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Ranks in `group` (default: all of them)."""
    return dist.get_world_size(group) if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_gather_padded(x_B: torch.Tensor, capacity: int, fill: float,
                      group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """[W·capacity, ...] every rank's `x_B` padded to `capacity` rows, in rank order
    (W and the ranks: `group`'s, default all)."""
    pad_shape = (capacity - x_B.shape[0],) + tuple(x_B.shape[1:])
    padded = torch.cat([x_B, x_B.new_full(pad_shape, fill)]) if pad_shape[0] else x_B
    if not is_distributed():
        return padded
    out = [torch.empty_like(padded) for _ in range(world_size(group))]
    dist.all_gather(out, padded.contiguous(), group=group)
    return torch.cat(out)


def gather_step_losses(t_B: torch.Tensor, loss_B: torch.Tensor, capacity: int,
                       group: dist.ProcessGroup | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's sampled steps and L_rec values, in rank order, padding removed."""
    t_N = all_gather_padded(t_B.to(torch.int64), capacity, fill=0, group=group)
    loss_N = all_gather_padded(loss_B.to(torch.float64), capacity, fill=0.0, group=group)
    keep = t_N > 0  # steps are 1..T; 0 marks padding
    return t_N[keep].cpu(), loss_N[keep].cpu()


def synced_sparse_grad(weight: torch.Tensor, capacity: int, group: dist.ProcessGroup | None = None) -> None:
    """Replace `weight.grad` (sparse: this rank's rows) by the average over the ranks of
    `group` (default all).

    Each rank contributes at most `capacity` distinct rows; rows of the same index from
    several ranks are summed by `coalesce`. DDP divides dense gradients by W; doing the
    same here keeps z_in on the same effective learning rate as the C-Net parameters.
    Every rank ends with the same coalesced gradient, hence the same SparseAdam update.
    """
    if not is_distributed():
        return
    if weight.grad is None:
        idx_R = torch.zeros(0, dtype=torch.int64, device=weight.device)
        rows_RD = weight.new_zeros(0, weight.shape[1])
    else:
        grad = weight.grad.coalesce()
        idx_R, rows_RD = grad.indices()[0], grad.values()
    idx_N = all_gather_padded(idx_R, capacity, fill=-1, group=group)
    rows_ND = all_gather_padded(rows_RD.detach(), capacity, fill=0.0, group=group)
    keep = idx_N >= 0
    weight.grad = torch.sparse_coo_tensor(
        idx_N[keep].unsqueeze(0), rows_ND[keep] / world_size(group), weight.shape,
        check_invariants=False,
    ).coalesce()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_objects(obj: T) -> list[T]:
    """[obj of rank 0, obj of rank 1, …] on every rank (small picklable objects only)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_objects_on_rank0(obj: T) -> list[T] | None:
    """[obj of rank 0, obj of rank 1, …] on rank 0, None elsewhere ([obj] in one process):
    for objects too large to send to every rank (a checkpoint's per-rank state)."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_reduce_min_int(value: int, device: torch.device) -> int:
    """The smallest `value` over ranks: every rank then runs the same number of steps."""
    x = torch.tensor([value], dtype=torch.int64, device=device)
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MIN)
    return int(x.item())


def zin_bytes_per_step(world: int, capacity: int, hidden: int) -> int:
    """Bytes every rank receives per step for z_in: user ids (int64) and float32 rows."""
    return world * capacity * (8 + 4 * hidden)


def sampler_bytes_per_step(world: int, capacity: int) -> int:
    """Bytes every rank receives per step for the sampler: t (int64) and L_rec (float64)."""
    return world * capacity * (8 + 8)
