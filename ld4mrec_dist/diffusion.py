"""Gaussian diffusion of LD4MRec as docs/design.md §2 reads it: schedule, forward, posterior, loss.

Shape legend
    B   users in the batch
    I   items
    T   diffusion steps; a step t is an integer in 1..T and indexes buffers at t − 1

Equations (docs/design.md §2 says where and why they differ from the printed paper)
    1 − ᾱ_t = s · [α_min + (t−1)/(T−1) · (1 − α_min)]          (Eq. 3; the fraction is 0 when T = 1)
    ᾱ_0 = 1,  α_t = ᾱ_t / ᾱ_{t−1},  β_t = 1 − α_t
    x_t = √ᾱ_t · x + √(1 − ᾱ_t) · ε                             (Eq. 2)
    μ̃(x_t, x_0, t) = c0_t · x_0 + ct_t · x_t                    (Eq. 6, x_0 form)
        c0_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t),  ct_t = √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
        (the paper's Eq. 7/9 print √ᾱ_t for ct_t: a typo, the standard DDPM √α_t is used)
    μ_θ = c0_t · x̂_θ + ct_t · x_t                               (Eq. 9)
    L_rec(u, t) = mean_i (μ̃ − μ_θ)² = c0_t² · mean_i (f_s(x_in) − x̂_θ)²   (Eq. 11)

Passes over [B, I]: each costs about as much as a GEMM of the step, so few are made. The
training forward keeps f_s(x_in) sparse (`SparseTarget`: the rows' entries and the chosen
ones, nothing of size B·I), draws the
soft-reconstruction mask at its chosen entries only (`bernoulli_positions`: ≈ p·B·I
geometric gaps instead of B·I uniforms), builds x_t inside the noise tensor
(`q_sample_sparse_`: one pass, plus a scatter at the target's entries) and turns x̂ into
x̂ − f_s in place (`rec_loss_`), whose squared row norms and gradient take one pass each
(`row_mean_square`). The straightforward dense forms stay beside them (`soft_reconstruct`
with `dense_draw=True`, `q_sample`, `rec_loss(fused=False)`): the same math, which the
tests compare against.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ld4mrec_dist.config import DiffusionSection


def schedule_values(steps: int, noise_scale: float, alpha_min: float) -> dict[str, Tensor]:
    """The noise schedule in float64, every entry a tensor of shape [T] indexed by t − 1.

    Keys: alpha_bar (ᾱ_t), alpha_bar_prev (ᾱ_{t−1}), alpha (α_t), beta (β_t),
    c0 and ct (the posterior-mean coefficients), posterior_var (σ²(t), Eq. 6).
    """
    if steps < 1:
        raise ValueError(f"steps={steps}: must be ≥ 1")
    t_T = torch.arange(1, steps + 1, dtype=torch.float64)
    frac_T = (t_T - 1) / (steps - 1) if steps > 1 else torch.zeros_like(t_T)
    one_minus_ab_T = noise_scale * (alpha_min + frac_T * (1.0 - alpha_min))
    ab_T = 1.0 - one_minus_ab_T
    ab_prev_T = torch.cat([torch.ones(1, dtype=torch.float64), ab_T[:-1]])
    one_minus_ab_prev_T = 1.0 - ab_prev_T
    # β_t = 1 − ᾱ_t/ᾱ_{t−1}, written as a difference of the (1 − ᾱ) terms: exact at t = 1
    # (β_1 = 1 − ᾱ_1, so c0_1 = 1) and free of cancellation for small noise scales.
    beta_T = (one_minus_ab_T - one_minus_ab_prev_T) / ab_prev_T
    alpha_T = 1.0 - beta_T
    return {
        "alpha_bar": ab_T,
        "alpha_bar_prev": ab_prev_T,
        "alpha": alpha_T,
        "beta": beta_T,
        "c0": ab_prev_T.sqrt() * beta_T / one_minus_ab_T,
        "ct": alpha_T.sqrt() * one_minus_ab_prev_T / one_minus_ab_T,
        "posterior_var": beta_T * one_minus_ab_prev_T / one_minus_ab_T,
    }


def _at(buf_T: Tensor, t_B: Tensor) -> Tensor:
    """buf[t − 1] as a [B, 1] column that broadcasts over items."""
    return buf_T[t_B - 1].unsqueeze(1)


class NoiseSchedule(nn.Module):
    """The schedule as float32 buffers (they move with `.to()` and live in `state_dict`).

    All methods compute in float32 whatever the input dtype (callers run them outside
    autocast); `t_B` is int64 in 1..T on the same device as the buffers.
    """

    # Registered buffers, declared for the type checker (register_buffer is dynamic).
    alpha_bar: Tensor
    c0: Tensor
    ct: Tensor
    sqrt_alpha_bar: Tensor
    sqrt_one_minus_alpha_bar: Tensor

    def __init__(self, cfg: DiffusionSection):
        super().__init__()
        self.steps = cfg.steps
        v = schedule_values(cfg.steps, cfg.noise_scale, cfg.alpha_min)
        for name in ("alpha_bar", "c0", "ct"):
            self.register_buffer(name, v[name].float())
        self.register_buffer("sqrt_alpha_bar", v["alpha_bar"].sqrt().float())
        self.register_buffer("sqrt_one_minus_alpha_bar", (1.0 - v["alpha_bar"]).sqrt().float())

    def q_mean(self, x_BI: Tensor, t_B: Tensor) -> Tensor:
        """E[x_t | x] = √ᾱ_t · x (the noiseless forward process)."""
        return _at(self.sqrt_alpha_bar, t_B) * x_BI.float()

    def q_sample(self, x_BI: Tensor, t_B: Tensor, noise_BI: Tensor) -> Tensor:
        """x_t = √ᾱ_t · x + √(1 − ᾱ_t) · ε (Eq. 2)."""
        return self.q_mean(x_BI, t_B) + _at(self.sqrt_one_minus_alpha_bar, t_B) * noise_BI.float()

    def q_sample_sparse_(self, target: SparseTarget, t_B: Tensor, noise_BI: Tensor) -> Tensor:
        """`q_sample(target.to_dense(), t_B, noise_BI)` written over `noise_BI` (float32, not
        requiring grad), which it returns: ε ← √(1 − ᾱ_t) · ε in one pass, then
        √ᾱ_t · target added at the target's Z entries only (it is 0 elsewhere)."""
        if noise_BI.dtype != torch.float32 or noise_BI.requires_grad or noise_BI.shape != target.shape:
            raise ValueError("q_sample_sparse_ overwrites a float32 [B, I] noise tensor that does not require grad")
        noise_BI.mul_(_at(self.sqrt_one_minus_alpha_bar, t_B))
        shifted_Z = self.sqrt_alpha_bar[t_B[target.row_Z] - 1] * target.val_Z
        return noise_BI.index_put_((target.row_Z, target.col_Z), shifted_Z, accumulate=True)

    def posterior_mean(self, xt_BI: Tensor, x0_BI: Tensor, t_B: Tensor) -> Tensor:
        """μ̃(x_t, x_0, t) = c0_t · x_0 + ct_t · x_t; with x_0 := x̂_θ this is μ_θ (Eq. 9)."""
        return _at(self.c0, t_B) * x0_BI.float() + _at(self.ct, t_B) * xt_BI.float()

    def rec_loss(self, target_BI: Tensor, xhat_BI: Tensor, t_B: Tensor, fused: bool = True) -> Tensor:
        """L_rec per user [B] = c0_t² · mean_i (target − x̂_θ)², in float32.

        `fused` (default): the squared error through `row_mean_square` (one read forward,
        one in-place pass backward); False: the plain formula.
        """
        if fused:
            err_B = row_mean_square(xhat_BI.float() - target_BI.float())
        else:
            err_B = (target_BI.float() - xhat_BI.float()).square().mean(dim=1)
        return self.c0[t_B - 1].square() * err_B

    def rec_loss_(self, target: SparseTarget, xhat_BI: Tensor, t_B: Tensor) -> Tensor:
        """`rec_loss(target.to_dense(), xhat_BI, t_B)` without a [B, I] temporary: x̂ (float32,
        the caller's own, not a leaf) is overwritten by x̂ − target, in place at the target's
        Z entries (autograd passes the gradient through unchanged), then `row_mean_square`."""
        if xhat_BI.dtype != torch.float32 or xhat_BI.shape != target.shape:
            raise ValueError(f"x̂ {tuple(xhat_BI.shape)} {xhat_BI.dtype}: need float32 {target.shape}")
        diff_BI = xhat_BI.index_put_((target.row_Z, target.col_Z), -target.val_Z, accumulate=True)
        return self.c0[t_B - 1].square() * row_mean_square(diff_BI)


class _RowMeanSquare(torch.autograd.Function):
    """mean_i d² per row, [B]; backward 2 d · g_B / I.

    Forward reads d once (a vectorised norm reduction, no [B, I] temporary) and keeps it;
    backward scales it in place into the gradient. A second backward through the same
    graph therefore fails (autograd's version check on the saved tensor) instead of
    returning a wrong gradient.
    """

    @staticmethod
    def forward(ctx: Any, d_BI: Tensor) -> Tensor:
        ctx.save_for_backward(d_BI)
        return torch.linalg.vector_norm(d_BI, 2, dim=1).square_().div_(d_BI.shape[1])

    @staticmethod
    def backward(ctx: Any, grad_B: Tensor) -> Tensor:
        (d_BI,) = ctx.saved_tensors
        return d_BI.mul_((grad_B * (2.0 / d_BI.shape[1])).unsqueeze(1))


def row_mean_square(d_BI: Tensor) -> Tensor:
    """mean_i d_BI² per row, [B], differentiable; `d_BI` becomes its gradient during
    backward (see `_RowMeanSquare`): pass a tensor nothing else reads afterwards."""
    if d_BI.dim() != 2:
        raise ValueError(f"need a [B, I] tensor, got shape {tuple(d_BI.shape)}")
    out: Tensor = _RowMeanSquare.apply(d_BI)  # type: ignore[no-untyped-call]
    return out


def bernoulli_positions(numel: int, prob: float, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None, chunk: int | None = None) -> Tensor:
    """The flat indices, int64 ascending, of the entries chosen by `numel` independent
    Bernoulli(`prob`) trials, drawn at the chosen entries only.

    The gaps between consecutive chosen entries of a Bernoulli process are i.i.d.
    Geometric(p) on {1, 2, …} (the first index is G₁ − 1), so cumulative sums of geometric
    draws give exactly the chosen set, at ≈ numel·p draws instead of numel. Gaps are
    drawn in float64 (`Tensor.geometric_`, 53-bit uniforms) in chunks of `chunk` (default
    mean + 6 sd + 16, so a second chunk is rare). `prob ≥ 1` chooses every entry, `prob ≤ 0`
    none.
    """
    if prob <= 0 or numel <= 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    if prob >= 1:
        return torch.arange(numel, dtype=torch.int64, device=device)
    if chunk is None:
        mean = numel * prob
        chunk = int(mean + 6.0 * math.sqrt(mean * (1.0 - prob))) + 16
    pieces: list[Tensor] = []
    last = -1
    while last < numel:
        gaps = torch.empty(chunk, dtype=torch.float64, device=device).geometric_(prob, generator=generator)
        # A gap past the end is as good as any longer one; the clamp also catches the
        # (2⁻⁵³-probable) infinite gap of a zero uniform before the integer cast.
        pos = gaps.clamp_(max=float(numel + 1)).to(torch.int64).cumsum_(0).add_(last)
        pieces.append(pos)
        last = int(pos[-1])
    pos = torch.cat(pieces)
    return pos[pos < numel]


def soft_reconstruct(x_BI: Tensor, prob: float, gamma: float,
                     generator: torch.Generator | None = None, *, dense_draw: bool = False) -> Tensor:
    """f_s(x) (Eq. 12): each entry is chosen independently with probability `prob`;
    a chosen clicked entry (x > 0.5) becomes 1 − γ, a chosen non-clicked one γ; the rest
    keep their value. `prob = 0` or `gamma = 0` returns `x_BI` itself (no random numbers
    are drawn).

    The chosen entries are drawn by `bernoulli_positions` over the B·I entries in row-major
    order (≈ p·B·I draws), as `sparse_reconstruct` draws them, and written into a copy of
    `x_BI`. `dense_draw=True` is the straightforward form: one uniform per entry, chosen
    where it is < p, two [B, I] `where`s. Both choose each entry independently with
    probability p (the same law, tested), from different random streams.
    """
    if prob <= 0 or gamma <= 0:
        return x_BI
    if dense_draw:
        chosen_BI = torch.rand(x_BI.shape, generator=generator, device=x_BI.device) < prob
        smoothed_BI = torch.where(x_BI > 0.5, 1.0 - gamma, gamma).to(x_BI.dtype)
        return torch.where(chosen_BI, smoothed_BI, x_BI)
    out_BI = x_BI.clone(memory_format=torch.contiguous_format)
    flat = out_BI.view(-1)
    pos_Z = bernoulli_positions(flat.numel(), prob, generator, flat.device)
    flat[pos_Z] = torch.where(flat[pos_Z] > 0.5, 1.0 - gamma, gamma).to(flat.dtype)
    return out_BI


class SparseTarget(NamedTuple):
    """A [B, I] float32 matrix by its Z stored entries, (row, col) pairs all distinct:
    m[row_Z, col_Z] = val_Z and 0 elsewhere. The training target f_s(x_in) of a batch."""

    row_Z: Tensor  # int64
    col_Z: Tensor  # int64
    val_Z: Tensor  # float32
    shape: tuple[int, int]

    def to_dense(self) -> Tensor:
        dense_BI = torch.zeros(self.shape, dtype=torch.float32, device=self.val_Z.device)
        return dense_BI.index_put_((self.row_Z, self.col_Z), self.val_Z)


def sparse_reconstruct(csr_BI: Tensor, prob: float, gamma: float,
                       generator: torch.Generator | None = None) -> SparseTarget:
    """f_s of a batch's CSR rows (Eq. 12) as a `SparseTarget`, never densified: the rows'
    entries (duplicates summed, as `to_dense` does) with the chosen ones smoothed, plus the
    chosen non-entries at γ. The chosen set is `soft_reconstruct`'s very draw (the same
    `bernoulli_positions` call over the B·I row-major entries), so the same generator state
    gives the same f_s in both (tested). `prob = 0` or `gamma = 0`: the rows themselves.
    """
    n_rows, n_items = csr_BI.shape
    device = csr_BI.device
    crow_B1, col_Z, val_Z = csr_BI.crow_indices(), csr_BI.col_indices(), csr_BI.values().float()
    row_Z = torch.repeat_interleave(torch.arange(n_rows, device=device), crow_B1.diff(), output_size=val_Z.numel())
    flat_Z, order_Z = torch.sort(row_Z * n_items + col_Z)
    val_Z = val_Z[order_Z]
    if flat_Z.numel() > 1 and bool((flat_Z.diff() == 0).any()):   # an uncoalesced CSR: sum its duplicates
        flat_Z, inverse_Z = torch.unique_consecutive(flat_Z, return_inverse=True)
        val_Z = torch.zeros(flat_Z.numel(), device=device).index_add_(0, inverse_Z, val_Z)
    if prob > 0 and gamma > 0:
        pos_C = bernoulli_positions(n_rows * n_items, prob, generator, device)
        at_C = torch.searchsorted(flat_Z, pos_C).clamp_(max=max(flat_Z.numel() - 1, 0))
        stored_C = (flat_Z[at_C] == pos_C) if flat_Z.numel() else torch.zeros_like(pos_C, dtype=torch.bool)
        x_C = torch.where(stored_C, val_Z[at_C] if flat_Z.numel() else 0.0, 0.0)
        smoothed_C = torch.where(x_C > 0.5, 1.0 - gamma, gamma).to(torch.float32)
        val_Z = val_Z.clone()
        val_Z[at_C[stored_C]] = smoothed_C[stored_C]
        flat_Z = torch.cat([flat_Z, pos_C[~stored_C]])
        val_Z = torch.cat([val_Z, smoothed_C[~stored_C]])
    return SparseTarget(flat_Z // n_items, flat_Z % n_items, val_Z, (n_rows, n_items))
