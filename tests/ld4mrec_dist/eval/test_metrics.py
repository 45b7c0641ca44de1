import math

import torch

from ld4mrec_dist.eval.metrics import hits, mask_items, metric_sums, top_items


def test_recall_and_ndcg_match_hand_computed_case():
    # 2 users, 5 items. User 0: relevant {1, 3}; ranking 3 > 0 > 1 > ... -> hits at ranks 1 and 3.
    scores = torch.tensor([[0.8, 0.5, 0.1, 0.9, 0.0],
                           [0.1, 0.2, 0.3, 0.4, 0.5]])
    truth = torch.tensor([[0, 1, 0, 1, 0],
                          [1, 0, 0, 0, 0]], dtype=torch.float32)
    hits_BC = hits(truth, top_items(scores, 3))
    assert hits_BC.tolist() == [[1, 0, 1], [0, 0, 0]]
    sums = metric_sums(hits_BC, truth.sum(1), [1, 3])
    assert math.isclose(sums["recall@1"].item(), 0.5)
    assert math.isclose(sums["recall@3"].item(), 1.0)
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert math.isclose(sums["ndcg@3"].item(), dcg / idcg)
    assert math.isclose(sums["ndcg@1"].item(), 1.0)


def test_ideal_dcg_uses_min_of_k_and_truth_size():
    # One relevant item among 4 found at rank 1: NDCG@2 is 1 (IDCG over min(2, 1) items).
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.3]])
    truth = torch.tensor([[1.0, 0, 0, 0]])
    sums = metric_sums(hits(truth, top_items(scores, 2)), truth.sum(1), [2])
    assert math.isclose(sums["ndcg@2"].item(), 1.0)
    # Three relevant, two found at ranks 1-2 with K=2: recall 2/3, NDCG 1.
    truth3 = torch.tensor([[1.0, 0, 1, 1]])
    scores3 = torch.tensor([[0.9, 0.1, 0.8, 0.0]])
    s3 = metric_sums(hits(truth3, top_items(scores3, 2)), truth3.sum(1), [2])
    assert math.isclose(s3["recall@2"].item(), 2 / 3)
    assert math.isclose(s3["ndcg@2"].item(), 1.0)


def test_masked_items_never_ranked_first():
    scores = torch.tensor([[5.0, 1.0, 0.5]])
    masked = mask_items(scores, torch.tensor([[1, 0, 0]]))
    assert torch.topk(masked, 1).indices.item() == 1
