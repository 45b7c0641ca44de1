"""The distributed randomized SVD (ld4mrec_dist/svd_dist.py) in one process: its pieces
(sketch, TSQR, clamping) and its quality against fbpca. Its layouts on 2, 3 and 2 × 2 gloo
ranks run in the item-parallel tests' 4-process fixture (parallel/test_item_parallel.py:
`test_distributed_svd_*`), against a dense SVD."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from ld4mrec_dist.encoders import svd_item_factors
from ld4mrec_dist.svd_dist import SKETCH_BLOCK, distributed_item_factors, sketch_rows, tsqr

U, I, K, SEED = 23, 17, 4, 5
def clicks() -> sp.csr_matrix:
    """A full-rank 0/1 matrix [U, I]."""
    return sp.csr_matrix((np.random.default_rng(1).random((U, I)) < 0.3).astype(np.float64))


def test_distributed_svd_sketch_is_layout_independent():
    n = SKETCH_BLOCK + 100
    full = sketch_rows(n, 0, n, 3, 7)
    assert np.array_equal(sketch_rows(n, SKETCH_BLOCK - 5, n, 3, 7), full[SKETCH_BLOCK - 5:])
    assert full.min() >= -1.0 and full.max() < 1.0 and abs(full.mean()) < 0.01


def test_distributed_svd_tsqr_one_rank_and_short_blocks():
    """X = QR with orthonormal Q, also for a block with fewer rows than columns."""
    x = np.random.default_rng(2).normal(size=(3, 5))
    q, r = tsqr(x, None)
    np.testing.assert_allclose(q @ r, x, atol=1e-12)
    np.testing.assert_allclose(np.triu(r), r)


def test_distributed_svd_matches_fbpca_and_clamps_the_rank():
    a = clicks()
    ours = distributed_item_factors(a, K, SEED).astype(np.float64)
    fb = svd_item_factors(a, K, SEED).astype(np.float64)
    assert np.linalg.norm(a @ ours) ** 2 == pytest.approx(np.linalg.norm(a @ fb) ** 2, rel=5e-3)
    assert distributed_item_factors(a, 40, SEED).shape == (I, 16)   # clamped to min(U, I) − 1
