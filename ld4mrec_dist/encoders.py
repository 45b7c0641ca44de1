"""Encoders of C-Net's conditions (docs/design.md §3): collaborative signal and multimodal preference.

Shape legend
    U   users of the training matrix      I   items
    B   users in the batch                k   SVD rank (d_svd)
    D_m width of modality m's raw item feature

    V_Ik    right singular vectors of the train matrix R ≈ U_k Σ_k V_kᵀ
    c_Bk    c_u = r_u V_k (= row u of U_k Σ_k for a train user)
    e_BDm   e_{u,m} = Σ_{i∈N_u} e_{i,m} / √(|N_u|·|N_i|)        (Eq. 14)

Everything works from a batch's sparse CSR rows: nothing here holds a dense U × I matrix.
"""

from __future__ import annotations

from typing import cast

import fbpca
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor


def svd_item_factors(train_csr: sp.spmatrix, k: int, seed: int, n_iter: int = 4) -> np.ndarray:
    """V_k, np.float32 [I, k], of a randomized truncated SVD (fbpca, `raw=True`: no centring).

    `k` is clamped to min(U, I) − 1 (the result's width says so; a run's start-up line
    reports it). fbpca draws from NumPy's global RNG,
    so it is seeded with `seed` and the caller's global state is restored afterwards. The
    sign of each singular vector is fixed (its largest-magnitude entry is positive) so that
    the factors do not depend on the RNG's sign choice. `n_iter` power iterations (fbpca's
    default is 2) sharpen the small singular values at little cost. Memory is O((U + I)·k)
    plus the sparse matrix; fbpca only densifies when k + 2 ≥ min(U, I) / 1.25, i.e. for
    tiny matrices.
    """
    a = sp.csr_matrix(train_csr, dtype=np.float64)
    n_users, n_items = a.shape
    k_max = min(n_users, n_items) - 1
    if k_max < 1:
        raise ValueError(f"train matrix {a.shape}: too small for an SVD")
    k = min(k, k_max)
    state = np.random.get_state()
    try:
        np.random.seed(seed % 2**32)
        _, _, va_kI = fbpca.pca(a, k=k, raw=True, n_iter=n_iter)
    finally:
        np.random.set_state(state)
    v_Ik = np.asarray(va_kI).T
    peak_k = np.abs(v_Ik).argmax(axis=0)
    signs_k = np.sign(v_Ik[peak_k, np.arange(k)])
    signs_k[signs_k == 0] = 1.0
    return np.ascontiguousarray(v_Ik * signs_k, dtype=np.float32)


def as_csr(rows_BI: Tensor) -> Tensor:
    """A batch's rows as a float32 sparse CSR tensor (dense or COO input is converted)."""
    if rows_BI.layout != torch.sparse_csr:
        rows_BI = rows_BI.to_sparse_csr()
    return rows_BI.to(torch.float32)


def dense_rows(rows_BI: Tensor) -> Tensor:
    """The CSR rows as a dense float32 [B, I] tensor, written once: one zero fill and a
    scatter of the Z entries (`Tensor.to_dense` of a CSR tensor fills two [B, I] buffers)."""
    csr = as_csr(rows_BI)
    dense_BI = torch.zeros(csr.shape, dtype=torch.float32, device=csr.device)
    dense_BI.index_put_((_row_of_entries(csr), csr.col_indices()), csr.values(), accumulate=True)
    return dense_BI


def collaborative_signal(rows_BI: Tensor, v_Ik: Tensor, norm: str = "none") -> Tensor:
    """c_Bk = r_u V_k, float32 [B, k], from sparse CSR rows, scaled per `norm`
    (ModelSection.collab_norm): none; history, c_u / ‖r_u‖₂ (= / √|N_u| for 0/1 rows),
    so that its size does not grow with the history length; unit, c_u / ‖c_u‖₂.
    A user without clicks keeps c_u = 0 in every case."""
    csr = as_csr(rows_BI)
    return scaled_collaborative(torch.sparse.mm(csr, v_Ik.float()), csr, norm)


def scaled_collaborative(c_Bk: Tensor, rows_BI: Tensor, norm: str) -> Tensor:
    """r_u V_k [B, k] scaled per `norm` (`collaborative_signal`); `rows_BI`: the whole rows."""
    csr = as_csr(rows_BI)
    if norm == "none":
        return c_Bk
    if norm == "history":
        return c_Bk / row_l2_norms(csr).clamp_min(1e-12).unsqueeze(1)
    if norm == "unit":
        return F.normalize(c_Bk, p=2.0, dim=1, eps=1e-12)
    raise ValueError(f"collab_norm={norm!r}: choose none, history or unit")


def _row_of_entries(csr: Tensor) -> Tensor:
    """int64 [Z]: the row index of each stored entry of a CSR tensor."""
    crow_B1, val_Z = csr.crow_indices(), csr.values()
    return torch.repeat_interleave(torch.arange(csr.shape[0], device=val_Z.device), crow_B1.diff(),
                                   output_size=val_Z.numel())


def row_l2_norms(rows_BI: Tensor) -> Tensor:
    """‖r_u‖₂ of each CSR row, float32 [B] (0 for an empty row)."""
    csr = as_csr(rows_BI)
    val_Z = csr.values()
    sq_B = torch.zeros(csr.shape[0], device=val_Z.device).index_add_(0, _row_of_entries(csr), val_Z.square())
    return sq_B.sqrt()


def normalized_rows(rows_BI: Tensor, item_degree_I: Tensor, row_degree_B: Tensor | None = None) -> Tensor:
    """The CSR rows reweighted to r_ui / √(|N_u|·|N_i|) (Eq. 14's weights), float32.

    |N_u| counts the non-zero entries of the row (`row_degree_B` when given: the rows are
    then a column block of longer rows, `row_degrees` of the whole ones), |N_i| is the
    item's train degree (`item_degree_I` indexed by the rows' columns). A
    degree of 0 is read as 1: a user without clicks gets e_u = 0, and an item with train
    degree 0 (possible only if a row holds an item absent from training) keeps a finite
    weight instead of dividing by zero.
    """
    csr = as_csr(rows_BI)
    crow_B1, col_Z, val_Z = csr.crow_indices(), csr.col_indices(), csr.values()
    row_Z = _row_of_entries(csr)
    deg_B = row_degrees(csr) if row_degree_B is None else row_degree_B.to(val_Z.device)
    deg_I = item_degree_I.to(device=val_Z.device, dtype=torch.float32)
    w_Z = val_Z * deg_B.clamp_min(1.0).rsqrt()[row_Z] * deg_I.clamp_min(1.0).rsqrt()[col_Z]
    return torch.sparse_csr_tensor(crow_B1, col_Z, w_Z, size=csr.shape, check_invariants=False)


def row_degrees(rows_BI: Tensor) -> Tensor:
    """|N_u|: the non-zero entries of each CSR row, float32 [B]."""
    csr = as_csr(rows_BI)
    val_Z = csr.values()
    return torch.zeros(csr.shape[0], device=val_Z.device).index_add_(0, _row_of_entries(csr), (val_Z != 0).float())


def column_block(rows_BI: Tensor, lo: int, hi: int) -> Tensor:
    """Columns [lo, hi) of CSR rows, as CSR rows [B, hi − lo] (column j is item lo + j):
    what an item rank's slice of V_k and of the features multiplies."""
    csr = as_csr(rows_BI)
    col_Z, val_Z = csr.col_indices(), csr.values()
    keep_Z = (col_Z >= lo) & (col_Z < hi)
    kept_B = torch.zeros(csr.shape[0], dtype=torch.int64, device=val_Z.device).index_add_(
        0, _row_of_entries(csr), keep_Z.long())
    crow_B1 = torch.cat([kept_B.new_zeros(1), kept_B.cumsum(0)]).to(csr.crow_indices().dtype)
    return torch.sparse_csr_tensor(crow_B1, (col_Z[keep_Z] - lo).to(col_Z.dtype), val_Z[keep_Z],
                                   size=(csr.shape[0], hi - lo), check_invariants=False)


FEATURE_CHUNK_ROWS = 65536
"""Item rows read at once when computing feature statistics (features may be memory-mapped)."""


def feature_scaling(feat_IDm: Tensor, norm: str) -> dict[str, Tensor]:
    """Statistics that rescale raw item features without copying them (ModelSection.feature_norm).

    none: {}. standardize: {"mean": μ [D_m], "inv_std": 1/σ [D_m]} over items (population
    std; a constant column gets 1/σ = 0: it carries no signal). l2: {"inv_norm": 1/‖e_i‖₂ [I]}
    (0 for an all-zero row). Read in chunks of `FEATURE_CHUNK_ROWS` rows, accumulated in float64.
    """
    if norm == "none":
        return {}
    n_items = feat_IDm.shape[0]
    chunks = [feat_IDm[s:s + FEATURE_CHUNK_ROWS].double() for s in range(0, n_items, FEATURE_CHUNK_ROWS)]
    if norm == "l2":
        norm_I = torch.cat([c.square().sum(dim=1).sqrt() for c in chunks])
        return {"inv_norm": torch.where(norm_I > 0, 1.0 / norm_I.clamp_min(1e-300), 0.0).float()}
    if norm == "standardize":
        # cast: sum() of tensors is a tensor (its start value 0 is only added to the first).
        mean_D = cast(Tensor, sum(c.sum(dim=0) for c in chunks)) / max(n_items, 1)
        var_D = cast(Tensor, sum((c - mean_D).square().sum(dim=0) for c in chunks)) / max(n_items, 1)
        return standardization(mean_D, var_D)
    raise ValueError(f"feature_norm={norm!r}: choose none, standardize or l2")


def standardization(mean_D: Tensor, var_D: Tensor) -> dict[str, Tensor]:
    """feature_norm=standardize's buffers from the population mean and variance (float64 in)."""
    std_D = var_D.sqrt()
    inv_D = torch.where(std_D > 1e-8 * (1.0 + mean_D.abs()), 1.0 / std_D.clamp_min(1e-300), 0.0)
    return {"mean": mean_D.float(), "inv_std": inv_D.float()}


def scaled_preference(weights_BI: Tensor, feat_IDm: Tensor, scaling: dict[str, Tensor]) -> Tensor:
    """Σ_i w_ui · e'_i, float32 [B, D_m], where e'_i is the item feature rescaled by
    `feature_scaling`: e_i / ‖e_i‖ (l2) or (e_i − μ) / σ (standardize), without forming e'.

    Standardize uses Σ_i w_ui (e_i − μ)/σ = (Σ_i w_ui e_i − (Σ_i w_ui) μ) / σ.
    """
    csr = as_csr(weights_BI)
    if "inv_norm" in scaling:
        val_Z = csr.values() * scaling["inv_norm"].to(csr.device)[csr.col_indices()]
        csr = torch.sparse_csr_tensor(csr.crow_indices(), csr.col_indices(), val_Z, size=csr.shape,
                                      check_invariants=False)
    e_BD = torch.sparse.mm(csr, feat_IDm.float())
    if "mean" in scaling:
        val_Z = csr.values()
        wsum_B = torch.zeros(csr.shape[0], device=val_Z.device).index_add_(0, _row_of_entries(csr), val_Z)
        e_BD = (e_BD - wsum_B.unsqueeze(1) * scaling["mean"].to(e_BD.device)) * scaling["inv_std"].to(e_BD.device)
    return e_BD
