"""User rows: CSR row stores and the dense/sparse minibatches cut from them.

Shapes: B users in a batch, I items, R rows of a store, Z non-zeros. A row store holds a
set of users' train rows in CSR form (memory O(Z)); a minibatch is a torch CSR tensor [B, I] that
the model densifies itself. Nothing here ever builds a |U| × I dense matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ld4mrec_dist.timing import StepTimer

# torch.sparse CSR is marked beta; we rely only on construction, to_dense and sparse.mm.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


@dataclass
class RowStore:
    """A set of users' rows: `users[r]` owns `csr[r]` (float32 binary, I columns)."""

    users: np.ndarray  # int64 [R]
    csr: sp.csr_matrix  # [R, I]

    def __len__(self) -> int:
        return len(self.users)


def users_with_rows(csr: sp.csr_matrix) -> np.ndarray:
    """int64: the users (rows) of a full-matrix CSR with ≥ 1 item."""
    return np.flatnonzero(np.diff(csr.indptr)).astype(np.int64)


def rows_with_items(csr: sp.csr_matrix) -> RowStore:
    """The row store of every user with ≥ 1 item in a full-matrix CSR."""
    users = users_with_rows(csr)
    return RowStore(users, csr[users])


def to_torch_csr(csr: sp.csr_matrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """A torch sparse CSR tensor with the same rows (float32)."""
    return torch.sparse_csr_tensor(
        torch.from_numpy(csr.indptr.astype(np.int64)),
        torch.from_numpy(csr.indices.astype(np.int64)),
        torch.from_numpy(csr.data.astype(np.float32)),
        size=csr.shape,
        check_invariants=False,  # built from a valid scipy CSR
    ).to(device)


def to_dense(csr: sp.csr_matrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """[B, I] dense float32 of a batch's rows (scatter, no per-row Python)."""
    out = torch.zeros(csr.shape, dtype=torch.float32, device=device)
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    out[torch.from_numpy(rows).to(device), torch.from_numpy(csr.indices.astype(np.int64)).to(device)] = 1.0
    return out


def epoch_order(n: int, seed: int, epoch: int, rank: int) -> np.ndarray:
    """A permutation of a rank's rows for an epoch: deterministic in (seed, epoch, rank)."""
    return np.random.default_rng([seed, epoch, rank]).permutation(n)


def torch_minibatches(store: RowStore, order: np.ndarray, batch_size: int, n_rows: int,
                      device: torch.device, timer: StepTimer) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`minibatches` as (users_B int64, rows_BI torch CSR) on `device`, timed as "data"."""
    batches = minibatches(store, order, batch_size, n_rows)
    while True:
        with timer("data"):
            nxt = next(batches, None)
            if nxt is None:
                return
            users_np, rows = nxt
            batch = torch.from_numpy(users_np).to(device), to_torch_csr(rows, device)
        yield batch


def minibatches(store: RowStore, order: np.ndarray, batch_size: int,
                n_rows: int) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
    """Yield (users_B, csr_B) over the first `n_rows` rows of `order`.

    Every rank passes the same `n_rows` (the smallest shard's size), so every rank runs
    the same number of steps with the same batch sizes: DDP hangs on unequal counts.
    Rows beyond it on a larger shard sit out this epoch; the next permutation differs.
    """
    for start in range(0, n_rows, batch_size):
        idx = np.sort(order[start:min(start + batch_size, n_rows)])
        yield store.users[idx], store.csr[idx]
