"""Top-k over item slices (docs/design.md §6.1): each rank ranks its own items, the W·C
candidates are merged into the global top-k.

Shapes (legend in ld4mrec_dist/__init__.py): B users, I items, L the items of a slice,
C the cut-off k, N candidates (W_item · C).

One total order makes the result independent of the split: score descending, then item
index ascending (a tie goes to the smaller index). The global top-C under it is made of
each slice's top-C under it, so merging the slices' lists gives exactly the single-rank
`topk_ordered`. Scores must not be NaN (masked items are −inf, which is fine).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as tdist
from torch import Tensor

from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.parallel.item import ItemLayout, column_slice, score_slice

NEG_INF = float("-inf")


def topk_ordered(scores_BI: Tensor, k: int, offset: int = 0) -> tuple[Tensor, Tensor]:
    """(scores [B, C], item indices + `offset` [B, C]) of each row's C = min(k, I) best items,
    ordered by score descending then index ascending; deterministic in the presence of ties."""
    n_rows, n_items = scores_BI.shape
    k = min(k, n_items)
    kth_B1 = torch.topk(scores_BI, k, dim=1).values[:, -1:]
    above_BI = scores_BI > kth_B1
    tied_BI = scores_BI == kth_B1
    # The ties at the k-th score that still fit, lowest indices first.
    fit_BI = tied_BI & (tied_BI.cumsum(1) <= k - above_BI.sum(1, keepdim=True))
    idx_BC = (above_BI | fit_BI).nonzero()[:, 1].reshape(n_rows, k)  # ascending index per row
    val_BC = scores_BI.gather(1, idx_BC)
    order_BC = torch.sort(val_BC, dim=1, descending=True, stable=True).indices
    return val_BC.gather(1, order_BC), idx_BC.gather(1, order_BC) + offset


def merge_topk(scores_BN: Tensor, items_BN: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-k of candidate lists (the slices' `topk_ordered` outputs side by side, items
    distinct), in `topk_ordered`'s order: (scores [B, C], items [B, C]), C = min(k, N)."""
    by_item_BN = torch.sort(items_BN, dim=1, stable=True).indices
    scores_BN, items_BN = scores_BN.gather(1, by_item_BN), items_BN.gather(1, by_item_BN)
    val_BC, pos_BC = topk_ordered(scores_BN, k)
    return val_BC, items_BN.gather(1, pos_BC)


@torch.no_grad()
def item_parallel_topk(model: LD4MRec, layout: ItemLayout, rows_BI: Tensor, users_B: Tensor, k: int,
                       mask_BI: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """All-ranking top-k of a batch on an item group: each rank scores its slice, masks its
    part of `mask_BI` (sparse rows, e.g. the train items) to −inf, keeps its `topk_ordered`,
    and one all-gather of W_item · B · k (score, item) pairs feeds `merge_topk`. Returns
    (scores [B, C], global item indices [B, C]), C = min(k, I), the same on every rank."""
    lo, hi = layout.lo, layout.hi
    scores_BL = score_slice(model, rows_BI, column_slice(rows_BI, lo, hi).to(model.device), users_B)
    if mask_BI is not None:
        scores_BL = scores_BL.masked_fill(column_slice(mask_BI, lo, hi).to(scores_BL.device) > 0, NEG_INF)
    val_BC, item_BC = topk_ordered(scores_BL, k, offset=lo)
    # Slices may hold fewer than k items: pad to k with (−inf, I), which sorts after every item.
    pad = k - val_BC.shape[1]
    val_BC = torch.cat([val_BC, val_BC.new_full((val_BC.shape[0], pad), NEG_INF)], dim=1)
    item_BC = torch.cat([item_BC, item_BC.new_full((item_BC.shape[0], pad), layout.n_items)], dim=1)
    vals = [torch.empty_like(val_BC) for _ in range(layout.item_world)]
    items = [torch.empty_like(item_BC) for _ in range(layout.item_world)]
    tdist.all_gather(vals, val_BC.contiguous(), group=layout.item_group)
    tdist.all_gather(items, item_BC.contiguous(), group=layout.item_group)
    return merge_topk(torch.cat(vals, dim=1), torch.cat(items, dim=1), min(k, layout.n_items))


def item_parallel_ranking(model: LD4MRec, layout: ItemLayout) -> Callable[[Tensor, Tensor, Tensor, int], Tensor]:
    """The evaluator's `RankFn` (rows, users, mask, k) -> items [B, C] for a sharded model:
    `item_parallel_topk`'s items. A collective: every rank of the item group must rank the
    same batches (an item group evaluates the same users)."""
    def rank(rows_BI: Tensor, users_B: Tensor, mask_BI: Tensor, k: int) -> Tensor:
        return item_parallel_topk(model, layout, rows_BI, users_B, k, mask_BI=mask_BI)[1]

    return rank
