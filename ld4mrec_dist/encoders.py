"""Encoders of C-Net's conditions (SPEC §3): collaborative signal and multimodal preference.

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

import warnings

import fbpca
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


def svd_item_factors(train_csr: sp.spmatrix, k: int, seed: int, n_iter: int = 4) -> np.ndarray:
    """V_k, np.float32 [I, k], of a randomized truncated SVD (fbpca, `raw=True`: no centring).

    `k` is clamped to min(U, I) − 1 with a warning. fbpca draws from NumPy's global RNG,
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
    if k > k_max:
        warnings.warn(f"svd rank {k} > min(|U|, |I|) − 1 = {k_max}: using {k_max}", stacklevel=2)
        k = k_max
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


def collaborative_signal(rows_BI: Tensor, v_Ik: Tensor) -> Tensor:
    """c_Bk = r_u V_k, float32 [B, k], from sparse CSR rows."""
    return torch.sparse.mm(as_csr(rows_BI), v_Ik.float())


def normalized_rows(rows_BI: Tensor, item_degree_I: Tensor) -> Tensor:
    """The CSR rows reweighted to r_ui / √(|N_u|·|N_i|) (Eq. 14's weights), float32.

    |N_u| counts the non-zero entries of the row, |N_i| is the item's train degree. A
    degree of 0 is read as 1: a user without clicks gets e_u = 0, and an item with train
    degree 0 (possible only if a row holds an item absent from training) keeps a finite
    weight instead of dividing by zero.
    """
    csr = as_csr(rows_BI)
    crow_B1, col_Z, val_Z = csr.crow_indices(), csr.col_indices(), csr.values()
    n_rows = csr.shape[0]
    row_Z = torch.repeat_interleave(torch.arange(n_rows, device=val_Z.device), crow_B1.diff(),
                                    output_size=val_Z.numel())
    deg_B = torch.zeros(n_rows, device=val_Z.device).index_add_(0, row_Z, (val_Z != 0).float())
    deg_I = item_degree_I.to(device=val_Z.device, dtype=torch.float32)
    w_Z = val_Z * deg_B.clamp_min(1.0).rsqrt()[row_Z] * deg_I.clamp_min(1.0).rsqrt()[col_Z]
    return torch.sparse_csr_tensor(crow_B1, col_Z, w_Z, size=csr.shape, check_invariants=False)


def modality_preference(rows_BI: Tensor, item_degree_I: Tensor, feat_IDm: Tensor) -> Tensor:
    """e_{u,m} (Eq. 14), float32 [B, D_m], from sparse CSR rows, train item degrees and the
    raw item features. (`LD4MRec` builds `normalized_rows` once per batch for all modalities.)"""
    return torch.sparse.mm(normalized_rows(rows_BI, item_degree_I), feat_IDm.float())
