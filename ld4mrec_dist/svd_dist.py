"""V_k of the train matrix from the rows the ranks already own: a distributed randomized SVD.

Shapes: U users, I items, R the users of this rank's data rank (its row block), L = hi − lo
the items of its item slice, k the SVD rank, l = k + 2 the sketch width (fbpca's default).

The train matrix A [U, I] is never gathered. The ranks form a ("data", "item") grid as
item-parallel training does: the data group's ranks hold disjoint row blocks (the users
`partition.user_range` gives them), the item group's ranks the same rows, each working
on its column slice [lo, hi). Rank (d, s) works on the block A_ds [R, L]. The algorithm is
fbpca's randomized SVD (tall form, `raw=True`: Halko, Martinsson & Tropp, alg. 4.4 with
its normalised power iterations), with every product split over the blocks:

    Ω_s  ~ U(−1, 1) [L, l]          drawn per block of `SKETCH_BLOCK` items, seeded by (seed, block)
    Y_d  = Σ_s A_ds Ω_s             [R, l]  all-reduce over the item group
    Q    = orth(Y)                           TSQR over the data group (below)
    n_iter times:
      Z_s = Σ_d A_dsᵀ Q_d           [L, l]  all-reduce over the data group; Z = orth(Z) over the item group
      Y_d = Σ_s A_ds Z_s            [R, l]  all-reduce over the item group; Q = orth(Y) over the data group
    Bᵀ_s = Σ_d A_dsᵀ Q_d            [L, l]  (B = Qᵀ A, l × I)
    Bᵀ   = Q_B R_B (TSQR, item group), R_B = U_r Σ W_rᵀ (an l × l SVD on every rank)
    V_k  = (Q_B U_r)[:, :k]         each rank keeps its rows [lo, hi)

orth is a TSQR: each rank factors its rows X_r = Q_r R_r, the l × l factors R_r are
all-gathered and the stack factored once more (Q̂ R), and Q_r ← Q_r Q̂_r; Householder QR
at both levels, so the columns stay orthonormal to rounding whatever the conditioning
(fbpca uses LU between the iterations, QR at the end). Per rank the memory is the rows it
owns plus O((R + L)·l) floats; per iteration the item group all-reduces R·l and the data
group L·l float64 (plus W·l² in the TSQR gathers). The signs are fixed as
`encoders.svd_item_factors` fixes them (each vector's largest-magnitude entry positive,
the maximum taken over all slices).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as tdist

from ld4mrec_dist import dist

SKETCH_BLOCK = 65536
"""Items per independently seeded block of the random sketch Ω (layout-independent draws)."""

Group = tdist.ProcessGroup | None
"""A process group; None: this rank alone (no communication)."""


def _size(group: Group) -> int:
    return 1 if group is None else tdist.get_world_size(group)


def _all_reduce(x: np.ndarray, group: Group) -> np.ndarray:
    if _size(group) == 1:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    tdist.all_reduce(t, group=group)
    return t.numpy()


def _all_gather(x: np.ndarray, group: Group) -> list[np.ndarray]:
    if _size(group) == 1:
        return [x]
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    parts = [torch.empty_like(t) for _ in range(_size(group))]
    tdist.all_gather(parts, t, group=group)
    return [p.numpy() for p in parts]


def sketch_rows(n_items: int, lo: int, hi: int, width: int, seed: int) -> np.ndarray:
    """Rows [lo, hi) of the random sketch Ω [I, width], uniform in (−1, 1), float64: the
    same rows whatever slice they are drawn in (one stream per `SKETCH_BLOCK` items)."""
    out = np.empty((hi - lo, width))
    for block in range(lo // SKETCH_BLOCK, -(-hi // SKETCH_BLOCK)):
        start, stop = block * SKETCH_BLOCK, min((block + 1) * SKETCH_BLOCK, n_items)
        drawn = np.random.default_rng([seed, block]).uniform(-1.0, 1.0, (stop - start, width))
        a, b = max(start, lo), min(stop, hi)
        out[a - lo:b - lo] = drawn[a - start:b - start]
    return out


def tsqr(x_RL: np.ndarray, group: Group) -> tuple[np.ndarray, np.ndarray]:
    """(Q [R, l] this rank's rows, R [l, l] the same on every rank) of the QR factorisation
    of the matrix whose row blocks the group's ranks hold (X = Q R, QᵀQ = I)."""
    width = x_RL.shape[1]
    q_local, r_local = np.linalg.qr(x_RL, mode="reduced")  # [R, min(R, l)], [min(R, l), l]
    r_ll = np.zeros((width, width))
    r_ll[:r_local.shape[0]] = r_local
    q_rl = np.zeros((x_RL.shape[0], width))
    q_rl[:, :q_local.shape[1]] = q_local
    if _size(group) == 1:
        q2, r = np.linalg.qr(r_ll)
        return q_rl @ q2, r
    stacked = np.concatenate(_all_gather(r_ll, group))  # [W·l, l]
    q2, r = np.linalg.qr(stacked, mode="reduced")
    me = tdist.get_rank(group)
    return q_rl @ q2[me * width:(me + 1) * width], r


def _fixed_signs(v_Lk: np.ndarray, group: Group) -> np.ndarray:
    """Each column times the sign of its largest-magnitude entry over all slices (the first
    slice's on a tie)."""
    k = v_Lk.shape[1]
    peak = np.abs(v_Lk).argmax(axis=0) if v_Lk.shape[0] else np.zeros(k, dtype=np.int64)
    vals = v_Lk[peak, np.arange(k)] if v_Lk.shape[0] else np.zeros(k)
    gathered = np.stack(_all_gather(vals, group))  # [W, k]
    winner = np.abs(gathered).argmax(axis=0)
    signs = np.sign(gathered[winner, np.arange(k)])
    signs[signs == 0] = 1.0
    return v_Lk * signs


def distributed_item_factors(rows_RI: sp.spmatrix, k: int, seed: int, n_iter: int = 4,
                             item_range: tuple[int, int] | None = None, data_group: Group = None,
                             item_group: Group = None) -> np.ndarray:
    """This rank's rows [lo, hi) of V_k, np.float32 [L, k] (module docstring).

    `rows_RI`: the rank's row block, all I columns (equal on the item group); `item_range`:
    the rank's item slice (default: all items, for an item group of one); `data_group`:
    the ranks holding the other row blocks; `item_group`: the ranks holding the same rows
    and the other slices. k is clamped to min(U, I) − 1, as `svd_item_factors` does (the
    result's width says so). Every rank of both groups must call it."""
    a = sp.csr_matrix(rows_RI, dtype=np.float64)
    n_items = a.shape[1]
    lo, hi = item_range or (0, n_items)
    if _size(item_group) == 1 and (lo, hi) != (0, n_items):
        raise ValueError(f"item slice [{lo}, {hi}) of {n_items} items without an item group")
    n_users = int(_all_reduce(np.array([float(a.shape[0])]), data_group)[0])
    k_max = min(n_users, n_items) - 1
    if k_max < 1:
        raise ValueError(f"train matrix {n_users}×{n_items}: too small for an SVD")
    k = min(k, k_max)
    width = min(k + 2, k_max + 1)
    block = a[:, lo:hi].tocsr()  # A_ds [R, L]
    block_t = block.T.tocsr()  # [L, R]

    def range_basis(z_Ll: np.ndarray) -> np.ndarray:
        """orth(A Z) over the data group: this rank's rows [R, l]."""
        return tsqr(_all_reduce(np.asarray(block @ z_Ll), item_group), data_group)[0]

    def co_range(q_Rl: np.ndarray) -> np.ndarray:
        """Aᵀ Q restricted to the slice, [L, l]."""
        return _all_reduce(np.asarray(block_t @ q_Rl), data_group)

    q_Rl = range_basis(sketch_rows(n_items, lo, hi, width, dist.stream_seed(seed)))
    for _ in range(n_iter):
        q_Rl = range_basis(tsqr(co_range(q_Rl), item_group)[0])
    qb_Ll, rb_ll = tsqr(co_range(q_Rl), item_group)  # Bᵀ = Q_B R_B
    u_r, _, _ = np.linalg.svd(rb_ll)  # singular values in descending order
    v_Lk = qb_Ll @ u_r[:, :k]
    return np.ascontiguousarray(_fixed_signs(v_Lk, item_group), dtype=np.float32)
