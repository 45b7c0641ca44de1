"""(4) Collaborative encoder: fbpca randomized SVD (k = 64) against scipy's `svds`.

On the Electronics-shape train matrix (in --quick, its first 40,000 users: all 63,001
items kept). fbpca as the trainer calls it (`svd_item_factors`, 4 power iterations); `svds`
with ARPACK, k = 64. Agreement of the right subspaces V_k: the cosines of the principal
angles between them (singular values of V_fbᵀ V_svds): their mean square (1 = same
subspace) and minimum; the variance fbpca's subspace captures relative to the exact
one (‖A V_fb‖²_F / ‖A V_svds‖²_F, what matters for c_u = r_u V_k); and the relative
error of the singular values.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from benchmarks.common import SEED, Context, dataset_path, row

BENCH = "svd"
SHAPE = "electronics"
K = 64


def subspace_agreement(v1_IK: np.ndarray, v2_IK: np.ndarray) -> dict[str, float]:
    q1, _ = np.linalg.qr(v1_IK.astype(np.float64))
    q2, _ = np.linalg.qr(v2_IK.astype(np.float64))
    cos_K = np.clip(np.linalg.svd(q1.T @ q2, compute_uv=False), 0.0, 1.0)
    return {"mean_cos2": float(np.mean(cos_K ** 2)), "min_cos": float(cos_K.min()),
            "top32_mean_cos2": float(np.mean(np.sort(cos_K)[::-1][:32] ** 2))}


def run(ctx: Context) -> list[dict]:
    from data_pipeline.dataset import open_dataset
    from ld4mrec_dist.encoders import svd_item_factors

    ds = open_dataset(dataset_path(SHAPE, ctx.data_root))
    a = ds.split_csr("train")
    if ctx.quick:
        a = a[:40_000]
    a64 = sp.csr_matrix(a, dtype=np.float64)
    t0 = time.perf_counter()
    v_fb = svd_item_factors(a, K, SEED)
    fb_s = time.perf_counter() - t0
    s_fb = np.linalg.norm(a64 @ v_fb.astype(np.float64), axis=0)  # σ_j = ‖A v_j‖

    t0 = time.perf_counter()
    _, s_sv, vt_sv = spla.svds(a64, k=K, random_state=SEED)
    sv_s = time.perf_counter() - t0
    order = np.argsort(s_sv)[::-1]
    s_sv, v_sv = s_sv[order], vt_sv[order].T
    agree = subspace_agreement(v_fb, v_sv)
    # Variance captured: ‖A V_fb‖²_F / ‖A V_svds‖²_F (1 = as good as the exact top-k subspace).
    captured = float(np.sum(s_fb ** 2) / np.sum(s_sv ** 2))
    sig_err = np.abs(np.sort(s_fb)[::-1] - s_sv) / s_sv
    common = {"shape": SHAPE, "matrix": list(a.shape), "nnz": int(a.nnz), "k": K}
    return [
        row(BENCH, f"fbpca randomized SVD, k={K}, {a.shape[0]:,}×{a.shape[1]:,}", fb_s, "s",
            ratio=sv_s / fb_s, reference="scipy svds (ARPACK) time: speed-up", reference_s=sv_s, **common),
        row(BENCH, "subspace agreement fbpca vs svds (mean cos² of principal angles)", agree["mean_cos2"], "",
            captured_variance_ratio=captured, min_cos=agree["min_cos"], top32_mean_cos2=agree["top32_mean_cos2"],
            sigma_rel_err_max=float(sig_err.max()), sigma_rel_err_mean=float(sig_err.mean()),
            sigma_rel_err_top10_max=float(sig_err[:10].max()), **common),
        row(BENCH, "variance captured by fbpca's V_k / by svds' V_k (‖AV‖²_F)", captured, "", **common),
    ]
