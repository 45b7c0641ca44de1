"""Distributed all-ranking evaluation (docs/design.md §4).

Shapes: B users scored at once, I items, W ranks, R a rank's users. Each rank evaluates
the users it owns (partition.py: the same users it trains on, their rows already in
memory): it scores them, masks their train items (and valid items at test time if asked),
takes the top k and sums Recall/NDCG; one all-reduce of the sums gives the single-process
result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from data_pipeline.dataset import PreparedDataset
from ld4mrec_dist.config import metric_names
from ld4mrec_dist.dist import all_reduce_sum
from ld4mrec_dist.eval.metrics import hits, mask_items, top_items
from ld4mrec_dist.eval.metrics import metric_sums as user_metric_sums
from ld4mrec_dist.partition import RankRows, read_rank_rows
from ld4mrec_dist.rows import to_dense, to_torch_csr

# scores_BI = score_fn(rows_BI as torch CSR, users_B)
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# items_BC = rank_fn(rows_BI, users_B, mask_BI, k): each user's k best unmasked items, best
# first (rows and mask as torch CSR). An item-parallel model ranks its slices and merges.
RankFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def ranking_by_scores(score_fn: ScoreFn) -> RankFn:
    """The RankFn of a model that scores every item at once: masked items pushed last."""
    def rank(rows_BI: torch.Tensor, users_B: torch.Tensor, mask_BI: torch.Tensor, k: int) -> torch.Tensor:
        return top_items(mask_items(score_fn(rows_BI, users_B).float(), mask_BI.to_dense()), k)

    return rank


@dataclass
class EvalData:
    """What evaluating one split on one rank needs: the rank's rows and its users.

    Row r of every matrix is user `first_user + r` (a rank holds a contiguous user range,
    see partition.py; a single process holds them all with first_user = 0)."""

    inputs: sp.csr_matrix  # [R, I] train rows: the model input and the mask
    truth: sp.csr_matrix  # [R, I] the split's items
    users: np.ndarray  # int64 global ids: users with ≥1 train and ≥1 truth item
    extra_mask: sp.csr_matrix | None = None  # [R, I] e.g. valid items at test time
    first_user: int = 0

    def of_users(self, users: range) -> EvalData:
        """The part of a whole-dataset EvalData (first_user = 0) that a rank owning `users` holds."""
        rows = slice(users.start, users.stop)
        mine = self.users[(self.users >= users.start) & (self.users < users.stop)]
        return EvalData(self.inputs[rows], self.truth[rows], mine,
                        None if self.extra_mask is None else self.extra_mask[rows], users.start)


def eval_data(rows: RankRows, mask_valid_at_test: bool) -> dict[str, EvalData]:
    """EvalData of the valid and test splits from a rank's rows."""
    first = rows.users.start
    return {
        "valid": EvalData(rows.train, rows.valid, rows.eval_users("valid"), first_user=first),
        "test": EvalData(rows.train, rows.test, rows.eval_users("test"),
                         extra_mask=rows.valid if mask_valid_at_test else None, first_user=first),
    }


def dataset_eval_data(ds: PreparedDataset, mask_valid_at_test: bool) -> dict[str, EvalData]:
    """EvalData of a whole dataset, for one process (e.g. scoring baselines)."""
    return eval_data(read_rank_rows(ds, 0, 1), mask_valid_at_test)


@torch.no_grad()
def metric_sums(rank_fn: RankFn, data: EvalData, ks: list[int], batch_size: int,
                device: torch.device) -> torch.Tensor:
    """float64 [len(metric_names(ks)) + 1]: metric sums over `data.users`, then their count."""
    names = metric_names(ks)
    total = torch.zeros(len(names) + 1, dtype=torch.float64, device=device)
    k_max = max(ks)
    for start in range(0, len(data.users), batch_size):
        users_B = data.users[start:start + batch_size]
        local_B = users_B - data.first_user
        rows = data.inputs[local_B]
        mask = rows if data.extra_mask is None else (rows + data.extra_mask[local_B])
        items_BC = rank_fn(to_torch_csr(rows, device), torch.from_numpy(users_B).to(device),
                           to_torch_csr(mask, device), k_max)
        truth_BI = to_dense(data.truth[local_B], device)
        sums = user_metric_sums(hits(truth_BI, items_BC), truth_BI.sum(1), ks)
        total[:-1] += torch.stack([sums[n] for n in names])
        total[-1] += len(users_B)
    return total


def evaluate(score_fn: ScoreFn, data: EvalData, ks: list[int], batch_size: int,
             device: torch.device) -> dict[str, float]:
    """`evaluate_ranking` of a model that scores every item at once."""
    return evaluate_ranking(ranking_by_scores(score_fn), data, ks, batch_size, device)


def evaluate_ranking(rank_fn: RankFn, data: EvalData, ks: list[int], batch_size: int,
                     device: torch.device) -> dict[str, float]:
    """Mean metrics over every rank's evaluation users: each rank ranks its own users
    (`data`), one all-reduce of the sums gives the single-process result. (Ranks that hold
    the same users, as an item group does, count them equally often in the sums and in
    the count: the mean is unchanged.)"""
    total = all_reduce_sum(metric_sums(rank_fn, data, ks, batch_size, device))
    count = max(total[-1].item(), 1.0)
    return {name: total[i].item() / count for i, name in enumerate(metric_names(ks))}
