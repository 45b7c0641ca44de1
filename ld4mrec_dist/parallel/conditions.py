"""C-Net's conditions on an item-sharded model: per-slice partial sums and one all-reduce.

Shapes: B users in the batch, I items, L = hi − lo the items of this rank's slice, K SVD
rank, D_m width of modality m's features.

Both conditions are sums over the items of a user's row, so they split over item slices:
    c_u     = r_u V_k = Σ_slices r_u[lo:hi] V_k[lo:hi]
    e_{u,m} = Σ_slices Σ_{i ∈ N_u ∩ [lo, hi)} r_ui / √(|N_u|·|N_i|) · e'_{i,m}     (Eq. 14)
Each rank computes its slice's terms from its own rows of V_k, of every feature array and
of the item degrees (|N_u| is the whole row's, which every rank of the group has), and one
all-reduce of B·(K + ΣD_m) float32 over the item group sums them. What is not linear in
the items comes after the sum: `model.collab_norm` (history: the whole row's norm; unit:
of the summed c_u). `model.feature_norm`: l2 scales each item by its own 1/‖e_i‖ (the
slice's); standardize's μ and σ are over all I items (`standardized_over_items`).
"""

from __future__ import annotations

import itertools
import re
from typing import Protocol

import torch
import torch.distributed as tdist
from torch import Tensor

from ld4mrec_dist.encoders import (
    as_csr,
    collaborative_signal,
    column_block,
    normalized_rows,
    row_degrees,
    scaled_collaborative,
    scaled_preference,
    standardization,
)
from ld4mrec_dist.model import LD4MRec


class ItemGroup(Protocol):
    """What these functions read of `parallel.item.ItemLayout` (a protocol, so that this
    module, which `parallel.item` imports, does not import it back)."""

    @property
    def item_group(self) -> tdist.ProcessGroup: ...
    @property
    def n_items(self) -> int: ...
    @property
    def item_world(self) -> int: ...


ITEM_BUFFERS = re.compile(r"item_factors|item_degree|item_feature_\d+(_inv_norm)?")
"""The names of the model's [I, ...] data-derived buffers: V_k, the degrees, each modality's
features and l2 norms. By name, not by size: standardize's [D_m] mean and inverse std are
per feature column, whatever D_m is (a D_m equal to I must not be cut)."""


def conditions_over_slices(model: LD4MRec, layout: ItemGroup, rows_BI: Tensor) -> tuple[Tensor | None, list[Tensor]]:
    """`LD4MRec.conditions` of an item-sharded model: (c_u [B, K] or None, [e_{u,m} [B, D_m]]),
    equal on every rank of the item group. `rows_BI`: the batch's whole sparse rows [B, I]."""
    assert model.item_range is not None, "an item-sharded model"
    csr_BI = as_csr(rows_BI).to(model.device)
    block_BL = column_block(csr_BI, *model.item_range)
    parts: list[Tensor] = []
    if model.cnet.uses_collaborative:
        parts.append(collaborative_signal(block_BL, model.item_factors, "none"))
    if model.modalities:
        weights_BL = normalized_rows(block_BL, model.item_degree, row_degrees(csr_BI))
        parts += [scaled_preference(weights_BL, model.item_feature(j), model.item_feature_scaling(j))
                  for j in range(len(model.modalities))]
    if not parts:
        return None, []
    widths = [p.shape[1] for p in parts]
    packed_BC = torch.cat(parts, dim=1)  # C = K + ΣD_m
    tdist.all_reduce(packed_BC, group=layout.item_group)
    ends = list(itertools.accumulate(widths))
    summed = [packed_BC[:, end - width:end] for width, end in zip(widths, ends, strict=True)]
    c_BK = scaled_collaborative(summed.pop(0), csr_BI, model.model_cfg.collab_norm) \
        if model.cnet.uses_collaborative else None
    return c_BK, summed


def condition_width(model: LD4MRec) -> int:
    """K + ΣD_m: the floats per user of the conditions' all-reduce (0: nothing to reduce)."""
    k = model.item_factors.shape[1] if model.cnet.uses_collaborative else 0
    return k + sum(model.item_feature(j).shape[1] for j in range(len(model.modalities)))


def keep_item_slice(model: LD4MRec, lo: int, hi: int) -> None:
    """Drop every row but [lo, hi) of the model's [I, ...] data-derived buffers (a model built
    whole, then sharded: its conditions then read the slice only, as one built sharded)."""
    for name, buf in list(model.named_buffers()):
        if ITEM_BUFFERS.fullmatch(name):
            setattr(model, name, buf[lo:hi].clone())
    model.item_range = (lo, hi)


def standardized_over_items(feat_LD: Tensor, n_items: int, group: tdist.ProcessGroup) -> dict[str, Tensor]:
    """feature_norm=standardize's {"mean", "inv_std"} over all I items, from each rank's
    slice: two all-reduces of D_m float64 (the sum, then the squared deviations)."""
    x_LD = feat_LD.double()
    sum_D = x_LD.sum(dim=0)
    tdist.all_reduce(sum_D, group=group)
    mean_D = sum_D / max(n_items, 1)
    sq_D = (x_LD - mean_D).square().sum(dim=0)
    tdist.all_reduce(sq_D, group=group)
    return standardization(mean_D, sq_D / max(n_items, 1))


def gathered_item_factors(model: LD4MRec, layout: ItemGroup) -> Tensor:
    """V_k [I, K] on CPU from the item group's slices (a collective: every rank of the
    group calls it); what the checkpoint keeps for scoring. Empty for the no_bd ablation."""
    if not model.cnet.uses_collaborative:
        return torch.zeros(0, 0)
    local_LK = model.item_factors.detach()
    size = -(-layout.n_items // layout.item_world)  # torch.chunk's slice size, the largest
    padded = local_LK.new_zeros(size, local_LK.shape[1])
    padded[:local_LK.shape[0]] = local_LK
    parts = [torch.empty_like(padded) for _ in range(layout.item_world)]
    tdist.all_gather(parts, padded, group=layout.item_group)
    return torch.cat(parts)[:layout.n_items].cpu()
