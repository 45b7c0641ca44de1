"""Reference recommenders evaluated with the same all-ranking protocol as LD4MRec."""

from __future__ import annotations

import numpy as np
import torch

from ld4mrec_dist.eval.evaluator import ScoreFn


def most_popular(item_degree_I: np.ndarray) -> ScoreFn:
    """Every user gets the items ranked by train popularity (ties by item index)."""
    popularity_I = torch.as_tensor(np.asarray(item_degree_I, dtype=np.float32))

    def score(rows_BI: torch.Tensor, users_B: torch.Tensor) -> torch.Tensor:
        return popularity_I.to(users_B.device).expand(users_B.shape[0], -1)

    return score
