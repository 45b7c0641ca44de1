"""C-Net (paper §3, docs/design.md §3): x̂_θ(x_t, t_f, c_u, {e_{u,m}}) — FC_in → BD → BG → FC_out.

Shape legend
    B     users in the batch          I   items
    D     hidden width d              K   SVD rank d_svd
    D_m   width of modality m's raw feature (and of e_{u,m})

    h_BD   = FC_in(x_t)
    b_BD   = BD(h, t_f, c_u):  b′ = act(W1 [h ; t_f] + b1),  c′ = act(W2 c_u + b2),
             g = sigmoid(W3 t_f + b3),  b_d = b′ ⊙ (1 − g) + c′ ⊙ g          (Eq. 16–19)
    y_BD   = BG(b_d): per modality m in order, y ← γ_m ⊙ y + β_m with γ_m = MLP(e_{u,m}),
             β_m = MLP′(e_{u,m}); LeakyReLU between consecutive stages      (Eq. 21–22)
    x̂_BI   = FC_out(act(y))

Activation `act` is tanh, as in DiffRec's MLP (LD4MRec builds on DiffRec): it keeps the
hidden code bounded whatever the scale of the raw modality features fed to the BG MLPs.
The paper leaves the σ of Eq. 16–17 unnamed (docs/design.md §3).

Linear layers use Xavier-normal weights and zero biases (DiffRec's initialisation); the BG
heads are initialised near the identity (see `AffineStage`).

Ablations (ModelSection.ablation): `no_bg` replaces the BG-Block by a second BD-Block;
`no_bd` replaces the BD-Block by DiffRec's act(W [h ; t_f] + b), without collaborative
branch; `no_sr` does not change C-Net (it only changes the loss target, see model.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

act = torch.tanh
"""C-Net's activation σ (Eq. 16–17 and before FC_out): tanh, as DiffRec."""


def timestep_embedding(t_B: Tensor, dim: int) -> Tensor:
    """z_t (Eq. 15), float32 [B, D]: z(2j) = sin(t / 10000^{2j/D}), z(2j+1) = cos(…)."""
    if dim % 2:
        raise ValueError(f"dim={dim}: the sinusoidal code needs an even width")
    j_J = torch.arange(dim // 2, device=t_B.device, dtype=torch.float32)
    freq_J = torch.exp(-math.log(10000.0) * 2.0 * j_J / dim)
    angle_BJ = t_B.float().unsqueeze(1) * freq_J
    return torch.stack([angle_BJ.sin(), angle_BJ.cos()], dim=2).reshape(t_B.shape[0], dim)


def scaled_input(x_BI: Tensor, norm: str) -> Tensor:
    """x_t as FC_in reads it: unchanged for "none"; for "l2" each row over its L2 norm
    (DiffRec's `F.normalize`, ε = 1e-12), so that FC_in's pre-activation does not grow
    with the number of clicks in the row."""
    if norm == "none":
        return x_BI
    if norm == "l2":
        return F.normalize(x_BI, p=2.0, dim=1, eps=1e-12)
    raise ValueError(f"input_norm={norm!r}: choose none or l2")


def _linear(n_in: int, n_out: int, device: torch.device | str | None = None) -> nn.Linear:
    """Xavier-normal weight, zero bias. On the meta device nothing is allocated nor drawn
    (the item layers of an item-sharded C-Net: `parallel.build` initialises their slices)."""
    layer = nn.Linear(n_in, n_out, device=device)
    nn.init.xavier_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class BDBlock(nn.Module):
    """Behaviour Denoising Block (Eq. 16–19). W1: D × 2D acts on [h ; t_f]."""

    def __init__(self, hidden: int, svd_rank: int):
        super().__init__()
        self.fc_behaviour = _linear(2 * hidden, hidden)   # W1, b1
        self.fc_collab = _linear(svd_rank, hidden)        # W2, b2
        self.fc_gate = _linear(hidden, hidden)            # W3, b3

    def gate(self, tf_BD: Tensor) -> Tensor:
        """g(t_f) = sigmoid(W3 t_f + b3) ∈ (0, 1), [B, D]."""
        return torch.sigmoid(self.fc_gate(tf_BD))

    def forward(self, h_BD: Tensor, tf_BD: Tensor, c_BK: Tensor) -> Tensor:
        b_BD = act(self.fc_behaviour(torch.cat([h_BD, tf_BD], dim=1)))
        c_BD = act(self.fc_collab(c_BK))
        g_BD = self.gate(tf_BD)
        return b_BD * (1.0 - g_BD) + c_BD * g_BD


class TimeConcatBlock(nn.Module):
    """The `no_bd` ablation: DiffRec's act(W [h ; t_f] + b); no collaborative branch."""

    def __init__(self, hidden: int):
        super().__init__()
        self.fc = _linear(2 * hidden, hidden)

    def forward(self, h_BD: Tensor, tf_BD: Tensor, c_BK: Tensor | None = None) -> Tensor:
        return act(self.fc(torch.cat([h_BD, tf_BD], dim=1)))


class AffineStage(nn.Module):
    """One channel-wise affine stage of the BG-Block (DF-GAN style): y ← γ ⊙ y + β with
    γ = MLP(e), β = MLP′(e), each MLP Linear(D_m, D) → LeakyReLU → Linear(D, D).

    Initialisation: the output layers get weights ~ N(0, 1e-3²) and biases 1 (γ) and 0 (β),
    so each stage starts as (nearly) the identity, γ ≈ 1 and β ≈ 0, as DF-GAN does; the
    weights are small but not zero so that gradients reach the first layers from step 1.
    """

    def __init__(self, feat_dim: int, hidden: int, negative_slope: float):
        super().__init__()
        self.negative_slope = negative_slope
        self.gamma_in, self.gamma_out = _linear(feat_dim, hidden), _linear(hidden, hidden)
        self.beta_in, self.beta_out = _linear(feat_dim, hidden), _linear(hidden, hidden)
        for out, bias in ((self.gamma_out, 1.0), (self.beta_out, 0.0)):
            nn.init.normal_(out.weight, std=1e-3)
            nn.init.constant_(out.bias, bias)

    def _mlp(self, fc_in: nn.Linear, fc_out: nn.Linear, e_BDm: Tensor) -> Tensor:
        return fc_out(F.leaky_relu(fc_in(e_BDm), self.negative_slope))

    def scale_shift(self, e_BDm: Tensor) -> tuple[Tensor, Tensor]:
        """(γ_m, β_m), each [B, D]."""
        return (self._mlp(self.gamma_in, self.gamma_out, e_BDm),
                self._mlp(self.beta_in, self.beta_out, e_BDm))

    def forward(self, y_BD: Tensor, e_BDm: Tensor) -> Tensor:
        gamma_BD, beta_BD = self.scale_shift(e_BDm)
        return gamma_BD * y_BD + beta_BD


class BGBlock(nn.Module):
    """Behaviour Generating Block (Eq. 21–22): one AffineStage per modality in order,
    LeakyReLU between consecutive stages. With no modality it is the identity (C-Net = FC_in → BD
    → FC_out); the run's start-up lines say so (report.py), not a Python warning."""

    def __init__(self, feat_dims: Sequence[int], hidden: int, negative_slope: float,
                 stage_slope: float | None = None):
        super().__init__()
        # Slope of the LeakyReLU between stages; None: the MLPs' `negative_slope`.
        self.negative_slope = negative_slope if stage_slope is None else stage_slope
        self.stages = nn.ModuleList(AffineStage(d_m, hidden, negative_slope) for d_m in feat_dims)

    def forward(self, y_BD: Tensor, prefs: Sequence[Tensor]) -> Tensor:
        if len(prefs) != len(self.stages):
            raise ValueError(f"BG-Block has {len(self.stages)} stages but got {len(prefs)} preferences")
        for m, (stage, e_BDm) in enumerate(zip(self.stages, prefs, strict=True)):
            if m > 0:
                y_BD = F.leaky_relu(y_BD, self.negative_slope)
            y_BD = stage(y_BD, e_BDm)
        return y_BD


class CNet(nn.Module):
    """x̂_θ: FC_in → (BD | TimeConcat) → (BG | BD) → FC_out(act(·)), per `ablation`."""

    def __init__(self, n_items: int, hidden: int, svd_rank: int, feat_dims: Sequence[int],
                 ablation: str = "none", negative_slope: float = 0.2, dropout: float = 0.0,
                 input_norm: str = "none", stage_slope: float | None = None,
                 item_device: torch.device | str | None = None):
        super().__init__()
        self.ablation, self.dropout, self.input_norm = ablation, dropout, input_norm
        # item_device="meta": FC_in / FC_out (the |I|-sized layers) are built without storage
        # and draw nothing from the RNG; `parallel.build` gives each rank its slice.
        self.fc_in = _linear(n_items, hidden, item_device)
        self.denoise = TimeConcatBlock(hidden) if ablation == "no_bd" else BDBlock(hidden, svd_rank)
        if ablation == "no_bg":
            self.generate: nn.Module = BDBlock(hidden, svd_rank)
        else:
            self.generate = BGBlock(feat_dims, hidden, negative_slope, stage_slope)
        self.fc_out = _linear(hidden, n_items, item_device)

    @property
    def uses_collaborative(self) -> bool:
        return self.ablation != "no_bd"

    @property
    def uses_modalities(self) -> bool:
        return isinstance(self.generate, BGBlock) and len(self.generate.stages) > 0

    def forward(self, xt_BI: Tensor, tf_BD: Tensor, c_BK: Tensor | None,
                prefs: Sequence[Tensor], dropout: bool = True) -> Tensor:
        """x̂_θ [B, I]. `dropout=False` (inference) disables the input dropout."""
        x_BI = scaled_input(xt_BI, self.input_norm)
        x_BI = F.dropout(x_BI, self.dropout, training=self.training and dropout)
        h_BD = self.fc_in(x_BI)
        b_BD = self.denoise(h_BD, tf_BD, c_BK)
        if isinstance(self.generate, BDBlock):
            y_BD = self.generate(b_BD, tf_BD, c_BK)
        else:
            y_BD = self.generate(b_BD, prefs)
        return self.fc_out(act(y_BD))
