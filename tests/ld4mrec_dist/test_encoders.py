"""Collaborative encoder (randomized SVD) and multimodal preference (Eq. 14)."""

from __future__ import annotations

import time
import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ld4mrec_dist.encoders import (
    collaborative_signal,
    dense_rows,
    feature_scaling,
    normalized_rows,
    row_l2_norms,
    scaled_preference,
    svd_item_factors,
)


def _low_rank_csr(m=120, n=80, seed=0):
    rng = np.random.default_rng(seed)
    q1, _ = np.linalg.qr(rng.standard_normal((m, 8)))
    q2, _ = np.linalg.qr(rng.standard_normal((n, 8)))
    s = np.array([50.0, 40, 30, 20, 10, 1, 0.5, 0.2])
    return sp.csr_matrix(q1 * s @ q2.T)


def test_svd_matches_dense_up_to_sign():
    a = _low_rank_csr()
    k = 5
    v = svd_item_factors(a, k, seed=0)
    assert v.shape == (80, k) and v.dtype == np.float32
    u_ref, s_ref, vt_ref = np.linalg.svd(a.toarray(), full_matrices=False)
    align = np.abs(np.sum(v * vt_ref[:k].T, axis=0))
    np.testing.assert_allclose(align, np.ones(k), atol=1e-5)
    # c_u = r_u V_k equals row u of U_k Σ_k up to each column's sign
    c = collaborative_signal(torch.tensor(a.toarray(), dtype=torch.float32).to_sparse_csr(), torch.from_numpy(v))
    np.testing.assert_allclose(np.abs(c.numpy()), np.abs(u_ref[:, :k] * s_ref[:k]), atol=1e-3)


def test_svd_deterministic_sign_fixed_and_rng_untouched():
    a = sp.random(100, 60, density=0.1, format="csr", random_state=1)
    a.data[:] = 1.0
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    v1, v2 = svd_item_factors(a, 4, seed=7), svd_item_factors(a, 4, seed=7)
    assert np.array_equal(v1, v2)
    assert np.array_equal(np.random.get_state()[1], before)
    peak = np.abs(v1).argmax(axis=0)
    assert np.all(v1[peak, np.arange(4)] > 0)


def test_svd_rank_clamped_without_a_python_warning():
    a = sp.random(6, 9, density=0.5, format="csr", random_state=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the run's start-up line reports the clamp
        v = svd_item_factors(a, 64, seed=0)
    assert v.shape == (9, 5)


def test_collaborative_signal_matches_dense():
    r = (torch.rand(7, 11) < 0.3).float()
    v = torch.randn(11, 3)
    torch.testing.assert_close(collaborative_signal(r.to_sparse_csr(), v), r @ v)


def test_modality_preference_matches_dense_formula():
    """e_{u,m} (Eq. 14) as the model computes it: the normalised rows times the features."""
    g = torch.Generator().manual_seed(0)
    r = (torch.rand(6, 10, generator=g) < 0.3).float()
    r[2] = 0                                            # a user without clicks
    deg = r.sum(0) + torch.randint(0, 3, (10,), generator=g).float()
    deg[r.sum(0) == 0] = 0                              # unseen items: degree 0, guarded
    feat = torch.randn(10, 4, generator=g)
    n_u = r.sum(1, keepdim=True)
    want = torch.zeros(6, 4)
    for u in range(6):                                  # the formula, item by item
        for i in torch.nonzero(r[u]).flatten().tolist():
            want[u] += feat[i] / torch.sqrt(n_u[u, 0] * deg[i])
    got = scaled_preference(normalized_rows(r.to_sparse_csr(), deg), feat, {})
    torch.testing.assert_close(got, want)
    assert torch.isfinite(got).all() and not got[2].any()


@pytest.mark.slow
def test_svd_electronics_scale_bounded_memory():
    """192,403 × 63,001 with ~1.7 M non-zeros: no densification (a dense copy is 97 GB)."""
    rng = np.random.default_rng(0)
    n_users, n_items, nnz = 192_403, 63_001, 1_700_000
    a = sp.csr_matrix((np.ones(nnz, dtype=np.float32),
                       (rng.integers(0, n_users, nnz), rng.integers(0, n_items, nnz))),
                      shape=(n_users, n_items))
    a.data[:] = 1.0
    tracemalloc.start()
    start = time.perf_counter()
    v = svd_item_factors(a, 64, seed=0)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert v.shape == (n_items, 64) and np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=0), 1.0, atol=1e-4)
    assert peak < 1.5e9, f"peak {peak / 1e9:.2f} GB"
    assert elapsed < 120


def test_collaborative_signal_scalings_hand_computed():
    # two users: 2 clicks and 0 clicks; V_k by hand
    r = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    v = torch.tensor([[3.0, 0.0], [5.0, 5.0], [1.0, 4.0]])
    raw = torch.tensor([[4.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(collaborative_signal(r.to_sparse_csr(), v, "none"), raw)
    # history: / ‖r_u‖₂ = / √2 ; an empty row stays 0 (no division by zero)
    torch.testing.assert_close(collaborative_signal(r.to_sparse_csr(), v, "history"),
                               raw / torch.tensor([[2.0 ** 0.5], [1.0]]))
    # unit: / ‖c_u‖₂ = / √32
    torch.testing.assert_close(collaborative_signal(r.to_sparse_csr(), v, "unit"),
                               torch.tensor([[2.0 ** -0.5, 2.0 ** -0.5], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="collab_norm"):
        collaborative_signal(r.to_sparse_csr(), v, "bogus")


def test_row_l2_norms():
    r = torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(row_l2_norms(r.to_sparse_csr()), torch.tensor([5.0, 0.0, 3.0 ** 0.5]))


def test_feature_scaling_statistics_closed_form(monkeypatch):
    monkeypatch.setattr("ld4mrec_dist.encoders.FEATURE_CHUNK_ROWS", 2)   # several chunks
    feat = torch.tensor([[1.0, 2.0, 7.0], [3.0, 2.0, 7.0], [5.0, 2.0, 7.0], [0.0, 0.0, 0.0]])
    st = feature_scaling(feat, "standardize")
    torch.testing.assert_close(st["mean"], torch.tensor([2.25, 1.5, 5.25]))
    std0 = torch.tensor([1.0, 3.0, 5.0, 0.0]).sub(2.25).square().mean().sqrt()
    assert st["inv_std"][0].item() == pytest.approx(1.0 / std0.item(), rel=1e-6)
    l2 = feature_scaling(feat, "l2")["inv_norm"]
    assert l2[0].item() == pytest.approx(1.0 / (1 + 4 + 49) ** 0.5, rel=1e-6)
    assert l2[3].item() == 0.0                                            # zero row: no inf
    assert feature_scaling(feat, "none") == {}
    const = feature_scaling(torch.full((3, 2), 4.0), "standardize")
    assert torch.equal(const["inv_std"], torch.zeros(2))                  # constant column: no signal


@pytest.mark.parametrize("norm", ["none", "standardize", "l2"])
def test_scaled_preference_equals_formula_on_rescaled_features(norm):
    g = torch.Generator().manual_seed(3)
    r = (torch.rand(5, 9, generator=g) < 0.4).float()
    r[1] = 0
    deg = r.sum(0).clamp_min(1.0)
    feat = torch.randn(9, 4, generator=g) * 3 + 1
    feat[4] = 0
    if norm == "standardize":
        mu, sd = feat.mean(0), feat.std(0, unbiased=False)
        feat_s = (feat - mu) / sd
    elif norm == "l2":
        n = feat.norm(dim=1, keepdim=True)
        feat_s = torch.where(n > 0, feat / n.clamp_min(1e-30), 0.0)
    else:
        feat_s = feat
    want = torch.sparse.mm(normalized_rows(r.to_sparse_csr(), deg), feat_s)  # Eq. 14 on e'_i
    got = scaled_preference(normalized_rows(r.to_sparse_csr(), deg), feat, feature_scaling(feat, norm))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dense_rows_equals_to_dense():
    rng = np.random.default_rng(0)
    rows = sp.random(9, 13, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    rows[4] = 0.0                                                       # an empty row
    rows.eliminate_zeros()
    csr = torch.sparse_csr_tensor(torch.from_numpy(rows.indptr).long(), torch.from_numpy(rows.indices).long(),
                                  torch.from_numpy(rows.data), size=rows.shape, check_invariants=True)
    got = dense_rows(csr)
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, csr.to_dense()) and torch.equal(got, torch.from_numpy(rows.toarray()))
    assert torch.equal(dense_rows(torch.from_numpy(rows.toarray())), got)   # dense input is accepted too
