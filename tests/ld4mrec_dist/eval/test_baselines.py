"""Baselines: the project's most-popular ranking and the library adapters (cornac, implicit)
on tiny hand-made data; the compare table."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ld4mrec_dist.compare import markdown_table
from ld4mrec_dist.eval.baselines import (
    BASELINES,
    EXTRA,
    BaselineError,
    TrainData,
    baseline,
    check_available,
    most_popular,
    train_data_of,
)
from ld4mrec_dist.eval.evaluator import EvalData, evaluate
from ld4mrec_dist.rows import to_torch_csr

# Small settings so every adapter fits in well under a second.
TINY_PARAMS = {
    "mostpop": {},
    "ease": {"lamb": 1.0},
    "bpr": {"max_iter": 3},
    "vbpr": {"n_epochs": 1, "batch_size": 64},
    "als": {"iterations": 2},
}


def tiny_data(n_users: int = 12, n_items: int = 9, seed: int = 0) -> TrainData:
    """Random binary train matrix whose last item has no train interaction and whose item
    popularity does not follow first appearance (a wrong id map would show)."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.35).astype(np.float32)
    dense[:, 1] = 1.0  # item 1 is the most popular, first seen after item 0
    dense[:, -1] = 0.0
    dense[-1] = 0.0  # a user without train rows (never evaluated, still has a row)
    return TrainData(sp.csr_matrix(dense), rng.standard_normal((n_items, 5)).astype(np.float32))


def fitted(name: str, data: TrainData, seed: int = 1):
    b = baseline(name)
    params = {**b.points(quick=True)[0], **TINY_PARAMS[name]}
    return b.fit(data, params, seed if b.stochastic else None)


def test_most_popular_ranks_items_by_train_degree_for_everyone():
    score = most_popular(np.array([3, 10, 0, 7]))
    scores = score(torch.zeros(2, 4).to_sparse_csr(), torch.tensor([0, 5]))
    assert scores.shape == (2, 4)
    assert torch.topk(scores, 2).indices.tolist() == [[1, 3], [1, 3]]


def test_markdown_table_has_spread_time_and_settings_columns():
    rows = [{"model": "most-popular", "runs": 1, "test": {"recall@20": 0.1, "ndcg@20": 0.05}, "time_s": 0.4},
            {"model": "LD4MRec", "runs": 2, "test": {"recall@20": 0.3, "ndcg@20": 0.2},
             "test_std": {"recall@20": 0.01, "ndcg@20": 0.02}, "time_s": 125.0},
            {"model": "EASE (cornac)", "runs": 1, "test": {"recall@20": 0.25, "ndcg@20": 0.15},
             "test_std": {"recall@20": 0.0, "ndcg@20": 0.0}, "time_s": 2.04, "chosen": {"lamb": 500}}]
    lines = markdown_table(rows, [20]).splitlines()
    assert lines[0] == "| model | runs | test recall@20 | test ndcg@20 | time (s) | settings |"
    assert lines[3] == "| LD4MRec | 2 | 0.3000 ± 0.0100 | 0.2000 ± 0.0200 | 125.0 |  |"
    assert lines[4] == "| EASE (cornac) | 1 | 0.2500 | 0.1500 | 2.0 | lamb=500 |"
    assert len(lines) == 5


def test_unknown_and_unavailable_baselines_are_one_line_errors():
    with pytest.raises(BaselineError, match="unknown baseline 'nope': choose from"):
        baseline("nope")
    with pytest.raises(BaselineError, match="LightGCN needs DGL"):
        baseline("lightgcn")


@pytest.mark.parametrize("lib", ["cornac", "implicit"])
def test_missing_library_names_the_extra_to_install(monkeypatch, lib):
    monkeypatch.setitem(sys.modules, lib, None)  # import of it now fails as if not installed
    name = next(n for n, b in BASELINES.items() if b.library == lib)
    with pytest.raises(BaselineError) as err:
        check_available([name])
    assert str(err.value) == f"baseline {name!r} needs the {lib} library ({lib} is not installed): {EXTRA}"
    assert EXTRA == 'pip install -e ".[baselines]"'


def test_grid_points_merge_fixed_settings_and_quick_grids_are_subsets():
    ease = BASELINES["ease"]
    assert [p["lamb"] for p in ease.points()] == [100, 250, 500, 1000, 2000, 5000]
    assert all(p["posB"] is False for p in ease.points())
    for b in BASELINES.values():
        full = b.points()
        assert all(p in full for p in b.points(quick=True)), b.name


def test_train_data_concatenates_every_modality():
    class FakeDataset:
        modalities = ["text", "genre"]

        def feature(self, name):
            return np.ones((3, 4)) if name == "text" else np.zeros((3, 2))

    data = train_data_of(FakeDataset(), sp.csr_matrix(np.eye(3)))
    assert data.features_IF.shape == (3, 6) and data.features_IF.dtype == np.float32
    assert (data.n_users, data.n_items) == (3, 3)


# --------------------------------------------------------------- these need the extra


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_adapter_scores_every_item_of_our_index_for_our_users(name):
    pytest.importorskip(BASELINES[name].library)
    data = tiny_data()
    score = fitted(name, data)
    users_B = torch.tensor([3, 0, 7])
    rows = data.train_UI[users_B.numpy()]
    scores_BI = score(to_torch_csr(rows, torch.device("cpu")), users_B)
    assert scores_BI.shape == (3, data.n_items)
    assert torch.isfinite(scores_BI).all()
    # the same user scored alone gets the same row: rows follow users_B, not a library order
    alone = score(to_torch_csr(rows[1:2], torch.device("cpu")), users_B[1:2])
    torch.testing.assert_close(alone[0], scores_BI[1])


def test_cornac_mostpop_is_train_popularity_in_our_item_index():
    pytest.importorskip("cornac")
    data = tiny_data()
    scores_BI = fitted("mostpop", data)(torch.zeros(2, 9).to_sparse_csr(), torch.tensor([0, 4]))
    degree_I = np.asarray(data.train_UI.sum(0)).ravel()
    np.testing.assert_array_equal(scores_BI.numpy(), np.stack([degree_I, degree_I]))


def test_cornac_ease_equals_the_closed_form_on_a_hand_made_matrix():
    pytest.importorskip("cornac")
    X = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float64)
    lam = 2.0
    # Steck (2019): P = (XᵀX + λI)⁻¹, B = I − P·diag(1 / diag P), so B_ii = 0.
    P = np.linalg.inv(X.T @ X + lam * np.eye(3))
    B = np.eye(3) - P / np.diag(P)[None, :]
    assert np.allclose(np.diag(B), 0.0)
    expected = X @ B
    score = baseline("ease").fit(TrainData(sp.csr_matrix(X.astype(np.float32))), {"lamb": lam, "posB": False}, None)
    got = score(torch.zeros(4, 3).to_sparse_csr(), torch.arange(4))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ease", "bpr", "vbpr"])
def test_batched_scores_equal_cornacs_own_per_user_score(name):
    cornac = pytest.importorskip("cornac")
    from ld4mrec_dist.eval.baselines import cornac_batch_scores, cornac_dataset

    data = tiny_data()
    train_set = cornac_dataset(data, seed=1)
    train_set.add_modalities(item_image=cornac.data.ImageModality(features=data.features_IF).build())
    model_name = {"ease": "EASE", "bpr": "BPR", "vbpr": "VBPR"}[name]
    params = {"ease": {"lamb": 1.0, "posB": False}, "bpr": {"k": 4, "max_iter": 3, "seed": 1},
              "vbpr": {"k": 2, "k2": 2, "n_epochs": 1, "seed": 1}}[name]
    model = getattr(cornac.models, model_name)(**params, verbose=False)
    model.fit(train_set)
    users = np.array([5, 0, 2])
    per_user = np.stack([np.asarray(model.score(int(u))).reshape(-1) for u in users])
    np.testing.assert_allclose(cornac_batch_scores(model, users), per_user, rtol=1e-5, atol=1e-6)


def test_evaluator_masks_a_baselines_train_and_valid_items_as_for_ld4mrec():
    """Recall/NDCG of an EASE adapter through `evaluate` equal a by-hand all-ranking with
    train (and, at test, valid) items excluded."""
    pytest.importorskip("cornac")
    rng = np.random.default_rng(3)
    n_users, n_items = 20, 15
    cells = rng.permutation(n_users * n_items)
    train = np.zeros(n_users * n_items, np.float32)
    valid, test = train.copy(), train.copy()
    train[cells[:90]], valid[cells[90:130]], test[cells[130:170]] = 1, 1, 1
    train, valid, test = (sp.csr_matrix(m.reshape(n_users, n_items)) for m in (train, valid, test))
    users = np.flatnonzero((np.diff(train.indptr) > 0) & (np.diff(test.indptr) > 0)).astype(np.int64)
    score = baseline("ease").fit(TrainData(train), {"lamb": 3.0, "posB": False}, None)
    got = evaluate(score, EvalData(train, test, users, extra_mask=valid), [5], 7, torch.device("cpu"))

    scores = score(torch.zeros(len(users), n_items).to_sparse_csr(), torch.from_numpy(users)).numpy().astype(np.float64)
    scores[(train[users] + valid[users]).toarray() > 0] = -np.inf
    truth = test[users].toarray()
    top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    hits = np.take_along_axis(truth, top, 1)
    recall = (hits.sum(1) / truth.sum(1)).mean()
    discount = 1 / np.log2(np.arange(5) + 2)
    idcg = np.array([discount[:min(5, int(n))].sum() for n in truth.sum(1)])
    ndcg = ((hits * discount).sum(1) / idcg).mean()
    assert got["recall@5"] == pytest.approx(recall) and got["ndcg@5"] == pytest.approx(ndcg)
    assert not np.isin(top[0], train[users[0]].indices).any()  # the by-hand ranking excluded train items


def test_vbpr_without_item_features_is_a_one_line_error():
    pytest.importorskip("cornac")
    with pytest.raises(BaselineError, match="vbpr.*no item features|VBPR.*no item features"):
        fitted("vbpr", TrainData(tiny_data().train_UI))
