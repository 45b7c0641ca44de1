"""Synthetic generator: shapes, determinism, and the planted structure a model should find."""

import hashlib

import numpy as np
import pandas as pd
import pytest

from data_pipeline.errors import DataError
from data_pipeline.prepare import prepare_dataset
from data_pipeline.readers.mmrec import read_mmrec
from data_pipeline.synthetic import SHAPES, generate_mmrec


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    raw = generate_mmrec("small", tmp_path_factory.mktemp("small") / "raw", seed=11, progress=False)
    inter = pd.read_csv(raw / "small.inter", sep="\t")
    return raw, inter, dict(np.load(raw / "truth.npz"))


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_tiny_shape_and_format(tiny_raw):
    src = read_mmrec(tiny_raw)
    assert src.split is None and src.rating is not None
    assert np.unique(src.user_raw).size == SHAPES["tiny"].users and src.n_items == SHAPES["tiny"].items
    assert {m: f.width for m, f in src.features.items()} == {"text": 8, "image": 16}
    assert np.bincount(np.unique(src.user_raw, return_counts=True)[1]).nonzero()[0].min() >= 5


def test_deterministic_for_a_seed(tmp_path, tiny_raw):
    again = generate_mmrec("tiny", tmp_path / "a", seed=7, progress=False)
    other = generate_mmrec("tiny", tmp_path / "b", seed=8, progress=False)
    assert digest(again) == digest(tiny_raw)
    assert digest(other)["tiny.inter"] != digest(tiny_raw)["tiny.inter"]


def test_progress_bars_stay_off_when_stderr_is_not_a_terminal(tmp_path, capsys):
    raw = generate_mmrec("tiny", tmp_path / "raw", seed=7, progress=True)
    prepare_dataset(read_mmrec(raw), "clean", tmp_path / "ds", progress=True)
    assert capsys.readouterr().err == ""     # a redirected log gets no carriage-return bars


def test_unknown_shape():
    with pytest.raises(DataError, match="choose one of"):
        generate_mmrec("huge", "/nonexistent")


def test_counts_near_target(small):
    _, inter, _ = small
    kept = int((inter.rating >= 4).sum())
    assert abs(kept - SHAPES["small"].kept) < 0.1 * SHAPES["small"].kept
    assert 0.1 < (inter.rating < 4).mean() < 0.35
    assert not inter.duplicated(["userID", "itemID"]).any()


def nearest_centroid_accuracy(x, labels, train, test):
    centroids = np.stack([x[train & (labels == c)].mean(0) for c in np.unique(labels)])
    guess = np.argmin(((x[test][:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    return (np.unique(labels)[guess] == labels[test]).mean()


def test_features_predict_the_cluster_even_for_cold_items(small):
    raw, inter, truth = small
    text = np.load(raw / "text_feat.npy")
    cluster = truth["item_cluster"]
    halves = np.arange(cluster.size) % 2 == 0
    assert nearest_centroid_accuracy(text, cluster, halves, ~halves) > 0.9
    degree = np.bincount(inter.itemID, minlength=cluster.size)
    cold = ~halves & (degree <= np.quantile(degree, 0.25))
    assert cold.sum() > 20 and nearest_centroid_accuracy(text, cluster, halves, cold) > 0.9


def test_collaborative_signal_popularity_and_meaningful_ratings(small):
    _, inter, truth = small
    same = truth["item_cluster"][inter.itemID] == truth["user_cluster"][inter.userID]
    assert same.mean() > 0.6
    low = inter.rating.to_numpy() < 4
    assert low[~same].mean() > 2 * low[same].mean()
    degree = np.sort(np.bincount(inter.itemID))[::-1]
    assert degree[: degree.size // 10].sum() > 0.3 * degree.sum()


def recall_at_20(score, train, test, items=None):
    score = np.where(train > 0, -np.inf, score)
    gt = (test > 0) & (True if items is None else items[None])
    hits = np.take_along_axis(gt, np.argsort(-score, 1)[:, :20], 1).sum(1)
    ok = gt.sum(1) > 0
    return (hits[ok] / np.minimum(gt.sum(1)[ok], 20)).mean()


def test_features_help_beyond_a_low_rank_svd(small, tmp_path):
    import scipy.sparse.linalg as sla

    from data_pipeline.dataset import open_dataset
    from data_pipeline.prepare import prepare_dataset

    ds = open_dataset(prepare_dataset(read_mmrec(small[0]), "clean", tmp_path / "ds", progress=False))
    users = ds.eval_users("test")
    train, test = ds.split_csr("train")[users].toarray(), ds.split_csr("test")[users].toarray()
    _, _, vt = sla.svds(ds.split_csr("train"), k=16, random_state=0)
    svd = train @ vt.T @ vt
    f = np.asarray(ds.feature("text"), np.float64)
    f = f - f.mean(0)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    feat = (train @ f) @ f.T
    cold = ds.item_degree <= np.quantile(ds.item_degree, 0.3)
    assert recall_at_20(feat, train, test, cold) > 3 * recall_at_20(svd, train, test, cold)
    z = lambda a: (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-9)  # noqa: E731
    assert recall_at_20(z(svd) + z(feat), train, test) > recall_at_20(svd, train, test)
