"""All-ranking top-k metrics (MMRec convention, docs/design.md §4), as sums that can be all-reduced.

Shapes (legend in ld4mrec_dist/__init__.py): B users in the batch, I items, C the largest
cut-off k. Recall@k = hits in the top k / |ground truth|; NDCG@k = DCG@k / IDCG@k with the
ideal DCG over min(k, |ground truth|). Users without ground truth are left out of the batch by
the caller, so every returned sum is over users with ≥ 1 relevant item.
"""

from __future__ import annotations

import torch

from ld4mrec_dist.config import RANKING_METRICS, metric_name

NEG_INF = float("-inf")


def mask_items(scores_BI: torch.Tensor, mask_BI: torch.Tensor) -> torch.Tensor:
    """Scores with the masked (already seen) items pushed below every other item."""
    return scores_BI.masked_fill(mask_BI.bool(), NEG_INF)


def top_items(scores_BI: torch.Tensor, k: int) -> torch.Tensor:
    """int64 [B, C], C = min(k, I): each row's best items, best first."""
    return torch.topk(scores_BI, min(k, scores_BI.shape[1]), dim=1, sorted=True).indices


def hits(truth_BI: torch.Tensor, items_BC: torch.Tensor) -> torch.Tensor:
    """float64 [B, C] 0/1: whether the item ranked c-th is relevant."""
    return truth_BI.gather(1, items_BC).to(torch.float64)


def metric_sums(hits_BC: torch.Tensor, n_truth_B: torch.Tensor, ks: list[int]) -> dict[str, torch.Tensor]:
    """Per-cut-off sums over the batch of Recall@k and NDCG@k (float64 scalars), keyed by
    the names of `config.metric_names`."""
    n_truth_B = n_truth_B.to(torch.float64)
    k_max = hits_BC.shape[1]
    discount_C = 1.0 / torch.log2(torch.arange(k_max, dtype=torch.float64, device=hits_BC.device) + 2.0)
    ideal_cum_C = torch.cumsum(discount_C, 0)  # IDCG for n relevant items = ideal_cum_C[n-1]
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        kk = min(k, k_max)
        hits = hits_BC[:, :kk]
        dcg_B = (hits * discount_C[:kk]).sum(1)
        idcg_B = ideal_cum_C[(torch.clamp(n_truth_B, max=kk) - 1).long()]
        per_user = {"recall": hits.sum(1) / n_truth_B, "ndcg": dcg_B / idcg_B}
        out.update({metric_name(m, k): per_user[m].sum() for m in RANKING_METRICS})
    return out

