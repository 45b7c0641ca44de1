import numpy as np
import torch

from ld4mrec_dist.compare import markdown_table
from ld4mrec_dist.eval.baselines import most_popular


def test_most_popular_ranks_items_by_train_degree_for_everyone():
    score = most_popular(np.array([3, 10, 0, 7]))
    scores = score(torch.zeros(2, 4).to_sparse_csr(), torch.tensor([0, 5]))
    assert scores.shape == (2, 4)
    assert torch.topk(scores, 2).indices.tolist() == [[1, 3], [1, 3]]


def test_markdown_table_lists_every_model_and_metric():
    rows = [{"model": "most-popular", "runs": 1, "test": {"recall@20": 0.1, "ndcg@20": 0.05}},
            {"model": "LD4MRec", "runs": 2, "test": {"recall@20": 0.3, "ndcg@20": 0.2},
             "test_std": {"recall@20": 0.01, "ndcg@20": 0.02}}]
    table = markdown_table(rows, [20])
    assert "| LD4MRec | 2 | 0.3000 ± 0.0100 | 0.2000 ± 0.0200 |" in table
    assert table.count("\n") == 3
