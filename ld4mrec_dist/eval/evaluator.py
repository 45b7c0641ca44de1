"""Distributed all-ranking evaluation (docs/design.md §4).

Shapes: B users scored at once, I items, W ranks. Users are split across ranks (rank r
takes every W-th evaluation user); each rank scores its users, masks their train items
(and valid items at test time if asked), takes the top k and sums Recall/NDCG; one
all-reduce of the sums gives exactly the single-process result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from data_pipeline.dataset import PreparedDataset
from ld4mrec_dist.dist import all_reduce_sum, rank, world_size
from ld4mrec_dist.eval.metrics import mask_items, metric_names, metric_sums, topk_hits
from ld4mrec_dist.rows import to_dense, to_torch_csr

# scores_BI = score_fn(rows_BI as torch CSR, users_B)
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EvalData:
    """What evaluating one split needs: model inputs, ground truth, extra mask, users."""

    inputs: sp.csr_matrix  # [U, I] train rows: the model input and the mask
    truth: sp.csr_matrix  # [U, I] the split's items
    users: np.ndarray  # int64, users with ≥1 train and ≥1 truth item
    extra_mask: sp.csr_matrix | None = None  # e.g. valid items at test time


def split_eval_data(ds: PreparedDataset, train: sp.csr_matrix, mask_valid_at_test: bool) -> dict[str, EvalData]:
    """EvalData of a prepared dataset's valid and test splits; `train` is its train CSR,
    read once by the caller (it is also the model input and the mask)."""
    valid = ds.split_csr("valid")
    return {
        "valid": EvalData(train, valid, ds.eval_users("valid")),
        "test": EvalData(train, ds.split_csr("test"), ds.eval_users("test"),
                         extra_mask=valid if mask_valid_at_test else None),
    }


def users_of_rank(users: np.ndarray, rank_: int, world: int) -> np.ndarray:
    return users[rank_::world]


@torch.no_grad()
def metric_sums_on_users(score_fn: ScoreFn, data: EvalData, users: np.ndarray, ks: list[int],
                         batch_size: int, device: torch.device) -> torch.Tensor:
    """float64 [len(metric_names(ks)) + 1]: metric sums over `users`, then their count."""
    names = metric_names(ks)
    total = torch.zeros(len(names) + 1, dtype=torch.float64, device=device)
    k_max = max(ks)
    for start in range(0, len(users), batch_size):
        users_B = users[start:start + batch_size]
        rows = data.inputs[users_B]
        mask = rows if data.extra_mask is None else (rows + data.extra_mask[users_B])
        scores_BI = score_fn(to_torch_csr(rows, device), torch.from_numpy(users_B).to(device))
        scores_BI = mask_items(scores_BI.float(), to_dense(mask, device))
        truth_BI = to_dense(data.truth[users_B], device)
        sums = metric_sums(topk_hits(scores_BI, truth_BI, k_max), truth_BI.sum(1), ks)
        total[:-1] += torch.stack([sums[n] for n in names])
        total[-1] += len(users_B)
    return total


def evaluate(score_fn: ScoreFn, data: EvalData, ks: list[int], batch_size: int,
             device: torch.device) -> dict[str, float]:
    """Mean metrics over all evaluation users, this rank scoring its share."""
    mine = users_of_rank(data.users, rank(), world_size())
    total = all_reduce_sum(metric_sums_on_users(score_fn, data, mine, ks, batch_size, device))
    count = max(total[-1].item(), 1.0)
    return {name: total[i].item() / count for i, name in enumerate(metric_names(ks))}
