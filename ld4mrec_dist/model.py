"""LD4MRec: a batch of users' sparse rows -> its loss (Alg. 1); rows -> scores (Alg. 2).

Shape legend
    B   users in the batch      I   items       T   diffusion steps
    D   hidden width d          K   SVD rank (width of the item factors)
    D_m width of modality m's raw item feature

Plain PyTorch; knows nothing of Ray or DDP. Device-agnostic: every tensor the model owns
is a parameter or a buffer, so `.to(device)` moves it all.

State: `state_dict` holds C-Net's parameters, `z_in.weight` and the small schedule buffers
(`schedule.*`). The data-derived buffers `item_factors` [I, K], `item_degree` [I] and
`item_feature_<j>` [I, D_m] are non-persistent: rebuild the model from the dataset (and
the SVD) before `load_state_dict`.

Item-sharded (`item_range=(lo, hi)`, built by `parallel.build`): those buffers hold only the
rows [lo, hi) of the catalogue, C-Net's FC_in / FC_out are built on the meta device (no
storage) for `parallel.item.shard_items` to shard, and `conditions` is the per-slice
partial sums plus the item group's all-reduce that `shard_items` installs.

Precision: the encoders, the forward process, the time code and the loss always run in
float32 with autocast disabled; only C-Net runs under the caller's autocast (e.g. bf16 on
CUDA), and its output is cast back to float32 before the loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ld4mrec_dist.cnet import CNet, timestep_embedding
from ld4mrec_dist.config import DiffusionSection, ModelSection
from ld4mrec_dist.diffusion import NoiseSchedule, SparseTarget, soft_reconstruct, sparse_reconstruct
from ld4mrec_dist.encoders import (
    as_csr,
    collaborative_signal,
    dense_rows,
    feature_scaling,
    normalized_rows,
    scaled_preference,
)
from ld4mrec_dist.sampler import importance_weights, sample_steps

DEFAULT_MODALITY_ORDER = ("text", "image")


class BatchLoss(NamedTuple):
    loss: Tensor
    """Scalar: mean over the batch of w_B · L_rec_B (differentiable)."""
    t: Tensor
    """int64 [B], the sampled steps in 1..T."""
    rec_loss: Tensor
    """float32 [B], L_rec per user, detached: what the importance-sampling history records."""


def select_modalities(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The BG-Block's modalities in order. None: text, image, then the others in the given
    order (those present); a list is taken as is and every name must be available."""
    if requested is None:
        first = [m for m in DEFAULT_MODALITY_ORDER if m in available]
        return first + [m for m in available if m not in DEFAULT_MODALITY_ORDER]
    missing = [m for m in requested if m not in available]
    if missing:
        raise ValueError(f"model.modalities asks for {missing} but the item features are {list(available)}")
    return list(requested)


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """float32 inside, whatever autocast the caller runs (the parts of Alg. 1 outside C-Net)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class LD4MRec(nn.Module):
    """The light diffusion recommender (paper §2–3 as docs/design.md §2–3 reads it).

    `item_factors` (V_k of the train matrix) is required unless `ablation == "no_bd"`;
    its width, not `model_cfg.svd_rank`, sets C-Net's collaborative input (the SVD may
    clamp the rank). `item_features` maps modality name -> [I, D_m]; `item_degree` [I]
    (train degrees) is required when a modality is used. The `no_bg` ablation uses no
    modality (its features are not even stored). `item_range` (lo, hi): the data-derived
    buffers are the catalogue's rows [lo, hi) only (module docstring).

    z_in is an `nn.Embedding(n_users or 1, D, sparse=True)`, initialised to the sinusoidal
    code of t = 0 (the paper reads t_in as approximately t_0); its gradient is sparse (the
    batch's rows only), so optimise it with e.g. `torch.optim.SparseAdam`.
    """

    # Buffers registered in __init__ when the ablation uses them, declared for the type checker.
    item_factors: Tensor
    item_degree: Tensor

    def __init__(self, model_cfg: ModelSection, diffusion_cfg: DiffusionSection, n_users: int, n_items: int,
                 item_factors: Tensor | None = None, item_features: Mapping[str, Tensor] | None = None,
                 item_degree: Tensor | None = None, item_range: tuple[int, int] | None = None):
        super().__init__()
        self.model_cfg, self.diffusion_cfg = model_cfg, diffusion_cfg
        self.n_users, self.n_items, self.hidden = n_users, n_items, model_cfg.hidden
        self.item_range = item_range
        # Installed by `parallel.item.shard_items` on an item-sharded model: rows -> conditions.
        self.sharded_conditions: Callable[[Tensor], tuple[Tensor | None, list[Tensor]]] | None = None
        held = n_items if item_range is None else item_range[1] - item_range[0]
        self.schedule = NoiseSchedule(diffusion_cfg)
        ablation = model_cfg.ablation

        svd_rank = model_cfg.svd_rank
        if ablation != "no_bd":
            if item_factors is None:
                raise ValueError(f"ablation={ablation!r} needs item_factors (V_k, [I, K])")
            if item_factors.shape[0] != held:
                raise ValueError(f"item_factors has {item_factors.shape[0]} rows, expected {held}")
            svd_rank = item_factors.shape[1]
            self.register_buffer("item_factors", torch.as_tensor(item_factors, dtype=torch.float32),
                                 persistent=False)

        features = dict(item_features or {})
        names = [] if ablation == "no_bg" else select_modalities(model_cfg.modalities, list(features))
        self.modalities: tuple[str, ...] = tuple(names)
        if names:
            if item_degree is None:
                raise ValueError("item_degree (train degree per item, [I]) is needed with modalities")
            self.register_buffer("item_degree", torch.as_tensor(item_degree, dtype=torch.float32).reshape(-1),
                                 persistent=False)
        for j, name in enumerate(names):
            feat = torch.as_tensor(features[name], dtype=torch.float32)
            if feat.dim() != 2 or feat.shape[0] != held:
                raise ValueError(f"item feature {name!r} has shape {tuple(feat.shape)}, expected [{held}, D_m]")
            self.register_buffer(f"item_feature_{j}", feat, persistent=False)
            # Statistics of model.feature_norm (small: [D_m] or [I]), data-derived like the features.
            for key, stat in feature_scaling(feat, model_cfg.feature_norm).items():
                self.register_buffer(f"item_feature_{j}_{key}", stat, persistent=False)

        self.z_in = nn.Embedding(n_users if model_cfg.per_user_time else 1, model_cfg.hidden, sparse=True)
        with torch.no_grad():
            self.z_in.weight.copy_(timestep_embedding(torch.zeros(1), model_cfg.hidden).expand_as(self.z_in.weight))

        feature_dims = [self.item_feature(j).shape[1] for j in range(len(names))]
        self.cnet = CNet(n_items, model_cfg.hidden, svd_rank, feature_dims,
                         ablation=ablation, negative_slope=model_cfg.negative_slope,
                         dropout=model_cfg.dropout, input_norm=model_cfg.input_norm,
                         stage_slope=model_cfg.stage_slope,
                         item_device=None if item_range is None else "meta")

    # ----------------------------------------------------------------- pieces
    @property
    def device(self) -> torch.device:
        return self.schedule.c0.device

    def item_feature(self, j: int) -> Tensor:
        """Modality j's raw item features [I, D_m] (the slice's rows when item-sharded)."""
        return getattr(self, f"item_feature_{j}")

    def item_feature_scaling(self, j: int) -> dict[str, Tensor]:
        """Modality j's `encoders.feature_scaling` statistics, as buffers."""
        keys = {"standardize": ("mean", "inv_std"), "l2": ("inv_norm",)}.get(self.model_cfg.feature_norm, ())
        return {k: getattr(self, f"item_feature_{j}_{k}") for k in keys}

    def z_in_rows(self, users_B: Tensor) -> Tensor:
        """z_in of the batch's users, [B, D] (row 0 for every user when shared)."""
        users_B = users_B.to(self.device, torch.int64)
        if not self.model_cfg.per_user_time:
            users_B = torch.zeros_like(users_B)
        return self.z_in(users_B)

    def conditions(self, rows_BI: Tensor) -> tuple[Tensor | None, list[Tensor]]:
        """(c_u [B, K] or None for no_bd, [e_{u,m} [B, D_m] per modality in order])."""
        if self.item_range is not None:
            if self.sharded_conditions is None:
                raise RuntimeError("an item-sharded LD4MRec needs parallel.item.shard_items before its conditions")
            return self.sharded_conditions(rows_BI)
        c_BK = (collaborative_signal(rows_BI, self.item_factors, self.model_cfg.collab_norm)
                if self.cnet.uses_collaborative else None)
        prefs: list[Tensor] = []
        if self.modalities:
            norm_BI = normalized_rows(rows_BI, self.item_degree)
            prefs = [scaled_preference(norm_BI, self.item_feature(j), self.item_feature_scaling(j))
                     for j in range(len(self.modalities))]
        return c_BK, prefs

    def reconstruction_target(self, x_BI: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """f_s(x_in) (Eq. 12), or x_in itself for `no_sr` (and when p = 0 or γ = 0)."""
        if self.model_cfg.ablation == "no_sr":
            return x_BI
        return soft_reconstruct(x_BI, self.diffusion_cfg.sr_prob, self.diffusion_cfg.sr_gamma, generator,
                                dense_draw=not self.model_cfg.fused_forward)

    def sparse_target(self, csr_BI: Tensor, generator: torch.Generator | None = None) -> SparseTarget:
        """`reconstruction_target` of the CSR rows as a `SparseTarget` (same draw, same f_s)."""
        no_sr = self.model_cfg.ablation == "no_sr"
        return sparse_reconstruct(csr_BI, 0.0 if no_sr else self.diffusion_cfg.sr_prob,
                                  self.diffusion_cfg.sr_gamma, generator)

    def _inputs(self, rows_BI: Tensor) -> tuple[Tensor, Tensor]:
        """(the rows as CSR on the model's device, a new dense float32 copy [B, I])."""
        csr_BI = as_csr(rows_BI).to(self.device)
        return csr_BI, dense_rows(csr_BI) if self.model_cfg.fused_forward else csr_BI.to_dense()

    # ----------------------------------------------------------------- training
    def forward(self, rows_BI: Tensor, users_B: Tensor, step_probs: Tensor | None = None,
                generator: torch.Generator | None = None, cnet: nn.Module | None = None) -> BatchLoss:
        """One batch's loss (Alg. 1, lines 3–10).

        `rows_BI`: float32 sparse CSR [B, I] (dense is accepted). `users_B`: global user
        indices. `step_probs`: p_T (None = uniform). `generator` (None = global RNG) draws
        t, the soft-reconstruction mask and ε, in this order; it must live on the model's
        device (the step probabilities are moved to it). `cnet`: the module that runs C-Net,
        default `self.cnet`; the trainer passes its DDP wrapper (`build.wrap_cnet`).

        `model.fused_forward` (default) makes the same computation with no [B, I] tensor
        but ε (which becomes x_t) and x̂ (which becomes x̂ − f_s): f_s stays sparse
        (`sparse_target`), x_t is `q_sample_sparse_`, the loss `rec_loss_`; only the
        mask's random stream differs from the straightforward form.
        """
        device = self.device
        fused = self.model_cfg.fused_forward
        with no_autocast(device):
            csr_BI = as_csr(rows_BI).to(device)
            steps = self.schedule.steps
            p_T = step_probs if step_probs is not None else torch.full((steps,), 1.0 / steps, dtype=torch.float64)
            p_T = p_T.to(generator.device if generator is not None else device)
            t_B = sample_steps(p_T, csr_BI.shape[0], generator).to(device)
            w_B = importance_weights(p_T, t_B)
            target: SparseTarget | Tensor
            if fused:
                target = self.sparse_target(csr_BI, generator)
                noise_BI = torch.randn(csr_BI.shape, generator=generator, device=device)
                xt_BI = self.schedule.q_sample_sparse_(target, t_B, noise_BI)
            else:
                target = self.reconstruction_target(csr_BI.to_dense(), generator)
                noise_BI = torch.randn(csr_BI.shape, generator=generator, device=device)
                xt_BI = self.schedule.q_sample(target, t_B, noise_BI)
            c_BK, prefs = self.conditions(csr_BI)
            tf_BD = timestep_embedding(t_B, self.hidden) + self.z_in_rows(users_B)
        xhat_BI = (cnet or self.cnet)(xt_BI, tf_BD, c_BK, prefs)
        with no_autocast(device):
            if isinstance(target, SparseTarget):
                rec_B = self.schedule.rec_loss_(target, xhat_BI.float(), t_B)
            else:
                rec_B = self.schedule.rec_loss(target, xhat_BI.float(), t_B, fused=False)
            loss = (w_B * rec_B).mean()
        return BatchLoss(loss=loss, t=t_B, rec_loss=rec_B.detach())

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def score(self, rows_BI: Tensor, users_B: Tensor) -> Tensor:
        """Alg. 2: x̂_θ(x_in, t_f = z_in, m), float32 [B, I]; deterministic (no noise, no dropout)."""
        with no_autocast(self.device):
            csr_BI, x_BI = self._inputs(rows_BI)
            c_BK, prefs = self.conditions(csr_BI)
            tf_BD = self.z_in_rows(users_B)
        return self.cnet(x_BI, tf_BD, c_BK, prefs, dropout=False).float()

    @torch.no_grad()
    def multi_step_scores(self, rows_BI: Tensor, users_B: Tensor, steps: int | None = None) -> Tensor:
        """The classic reverse process, for comparison with one-step inference: from
        x_n = √ᾱ_n · x_in (the forward mean, no noise), x_{t−1} = μ_θ(x_t, t) for
        t = n..1 with t_f = z_t + z_in; returns x_0 (= x̂_θ at t = 1, as c0_1 = 1, ct_1 = 0).
        `steps` = n, default T. Float32 [B, I], deterministic.
        """
        n = self.schedule.steps if steps is None else int(steps)
        if not 1 <= n <= self.schedule.steps:
            raise ValueError(f"steps={steps}: must be in 1..{self.schedule.steps}")
        with no_autocast(self.device):
            csr_BI, x_BI = self._inputs(rows_BI)
            c_BK, prefs = self.conditions(csr_BI)
            zin_BD = self.z_in_rows(users_B)
            t_B = torch.full((x_BI.shape[0],), n, dtype=torch.int64, device=self.device)
            x_BI = self.schedule.q_mean(x_BI, t_B)
        for t in range(n, 0, -1):
            t_B = torch.full_like(t_B, t)
            tf_BD = timestep_embedding(t_B, self.hidden) + zin_BD
            xhat_BI = self.cnet(x_BI, tf_BD, c_BK, prefs, dropout=False).float()
            with no_autocast(self.device):
                x_BI = self.schedule.posterior_mean(x_BI, xhat_BI, t_B)
        return x_BI
