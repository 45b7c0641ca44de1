"""Importance sampling of the diffusion step (Eq. 13) as pure tensor functions.

Shape legend
    T   diffusion steps (a step t is an integer in 1..T, row t − 1 of the table)
    H   losses kept per step (DiffusionSection.history, default 10)
    N   (t, L_rec) pairs in one update — with several workers, every rank's values
        concatenated in rank order, so that every rank applies the same update
    B   steps drawn for one batch

The history is a FIFO ring per step: the c-th value ever recorded for step t (c counted
from 0) is written to slot c mod H of row t − 1, so a row always holds the latest H
values. `counts[t − 1]` is how many values step t has ever received. Until every step
has H values, sampling is uniform; afterwards p_t ∝ √(mean of the row's squared values),
mixed with a uniform floor: p = (1 − floor) · p_is + floor / T. A sample's weight is
1 / (T · p_t), so uniform sampling gives weight 1 and E_p[w · L] = mean_t L_t.

Every function is pure (returns new tensors) and deterministic given its inputs, so
equal inputs on every rank give bit-equal tables and probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ld4mrec_dist.config import DiffusionSection


def init_history(steps: int, history: int) -> tuple[Tensor, Tensor]:
    """An empty history: table float64 [T, H] zeros, counts int64 [T] zeros."""
    if steps < 1 or history < 1:
        raise ValueError(f"steps={steps}, history={history}: both must be ≥ 1")
    return torch.zeros(steps, history, dtype=torch.float64), torch.zeros(steps, dtype=torch.int64)


def update_history(table_TH: Tensor, counts_T: Tensor, t_N: Tensor, loss_N: Tensor) -> tuple[Tensor, Tensor]:
    """Record the losses `loss_N` of steps `t_N` (in this order) and return (table, counts).

    Equal to recording the N pairs one by one; vectorised: a stable sort groups the pairs
    by step while keeping their order, the rank of each pair within its step gives its
    ring slot, and only the last H pairs of each step are written (so no slot is written
    twice and the scatter is deterministic).
    """
    steps, history = table_TH.shape
    t_N = t_N.reshape(-1).to(device=counts_T.device, dtype=torch.int64)
    loss_N = loss_N.reshape(-1).detach().to(device=table_TH.device, dtype=torch.float64)
    if t_N.numel() != loss_N.numel():
        raise ValueError(f"{t_N.numel()} steps but {loss_N.numel()} losses")
    if t_N.numel() == 0:
        return table_TH.clone(), counts_T.clone()
    if int(t_N.min()) < 1 or int(t_N.max()) > steps:
        raise ValueError(f"steps must be in 1..{steps}, got {t_N.min().item()}..{t_N.max().item()}")
    row_N = t_N - 1
    new_T = torch.bincount(row_N, minlength=steps)
    row_sorted, order_N = torch.sort(row_N, stable=True)
    group_start_T = torch.cumsum(new_T, 0) - new_T
    rank_N = torch.arange(t_N.numel(), device=t_N.device) - group_start_T[row_sorted]
    keep_N = rank_N >= (new_T[row_sorted] - history)          # the last H of each step
    slot_N = (counts_T[row_sorted] + rank_N) % history
    table = table_TH.clone()
    table[row_sorted[keep_N], slot_N[keep_N]] = loss_N[order_N][keep_N]
    return table, counts_T + new_T


def step_probabilities(table_TH: Tensor, counts_T: Tensor, floor: float, enabled: bool = True) -> Tensor:
    """p_t, float64 [T]: uniform until every step has H values (or when disabled, or when
    every recorded loss is 0); then (1 − floor) · √mean(L²)/Σ + floor / T."""
    steps, history = table_TH.shape
    uniform_T = torch.full((steps,), 1.0 / steps, dtype=torch.float64, device=table_TH.device)
    if not enabled or bool((counts_T < history).any()):
        return uniform_T
    rms_T = table_TH.square().mean(dim=1).sqrt()
    total = rms_T.sum()
    if not bool(torch.isfinite(total)) or float(total) <= 0.0:
        return uniform_T
    return (1.0 - floor) * rms_T / total + floor / steps


def sample_steps(p_T: Tensor, batch: int, generator: torch.Generator | None = None) -> Tensor:
    """B steps drawn i.i.d. from p_T, int64 in 1..T, on p_T's device (the generator's device
    must match it)."""
    return torch.multinomial(p_T, batch, replacement=True, generator=generator) + 1


def importance_weights(p_T: Tensor, t_B: Tensor) -> Tensor:
    """w_B = 1 / (T · p_t), float32 on t_B's device (1 under uniform sampling)."""
    steps = p_T.numel()
    return (1.0 / (steps * p_T.to(t_B.device)[t_B - 1])).float()


@dataclass
class SamplerHistory:
    """The importance-sampling history (Eq. 13): equal on every rank after every step."""

    table_TH: Tensor  # float64 [T, H] the latest H losses of each step
    counts_T: Tensor  # int64 [T] losses ever recorded per step

    @classmethod
    def empty(cls, steps: int, diffusion: DiffusionSection) -> SamplerHistory:
        """T `steps` (the model's schedule is their one owner), H from the config."""
        return cls(*init_history(steps, diffusion.history))

    def probabilities(self, diffusion: DiffusionSection) -> Tensor:
        """p_T, float64 [T] (uniform until every step has H values)."""
        return step_probabilities(self.table_TH, self.counts_T, diffusion.uniform_floor,
                                  enabled=diffusion.importance_sampling)

    def record(self, t_N: Tensor, loss_N: Tensor) -> None:
        self.table_TH, self.counts_T = update_history(self.table_TH, self.counts_T, t_N, loss_N)
