import numpy as np
import scipy.sparse as sp
import torch

from ld4mrec_dist.rows import RowStore, epoch_order, minibatches, rows_with_items, to_dense, torch_minibatches
from ld4mrec_dist.timing import PieceTimer


def _store(users, items_per_user, n_items):
    rows = sp.csr_matrix((len(users), n_items), dtype=np.float32).tolil()
    for r, items in enumerate(items_per_user):
        rows[r, items] = 1.0
    return RowStore(np.asarray(users, np.int64), rows.tocsr())


def test_rows_with_items_keeps_non_empty_rows_by_user():
    csr = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 0], [1, 0, 1]], np.float32))
    store = rows_with_items(csr)
    assert store.users.tolist() == [0, 2]
    assert to_dense(store.csr).tolist() == [[0, 1, 0], [1, 0, 1]]


def test_unequal_rank_stores_give_equal_steps_and_sizes():
    small = _store(range(0, 7), [[0]] * 7, 3)
    large = _store(range(7, 20), [[1]] * 13, 3)
    n_rows = min(len(small), len(large))  # what all_reduce_min_int agrees on
    sizes = []
    for rank, store in enumerate((small, large)):
        order = epoch_order(len(store), seed=1, epoch=0, rank=rank)
        sizes.append([len(u) for u, _ in minibatches(store, order, batch_size=3, n_rows=n_rows)])
    assert sizes[0] == sizes[1] == [3, 3, 1]


def test_torch_minibatches_are_the_minibatches_as_tensors_and_time_the_data():
    store = _store([3, 5, 8, 9], [[0], [1, 2], [2], [0, 1]], 3)
    order = epoch_order(len(store), seed=0, epoch=0, rank=0)
    timer = PieceTimer()
    got = list(torch_minibatches(store, order, 3, len(store), torch.device("cpu"), timer))
    want = list(minibatches(store, order, 3, len(store)))
    assert len(got) == len(want) == 2
    for (users_B, rows_BI), (users_np, rows) in zip(got, want, strict=True):
        assert users_B.tolist() == users_np.tolist()
        assert rows_BI.to_dense().tolist() == rows.toarray().tolist()
    assert timer.total["data"] > 0


def test_epoch_order_is_deterministic_and_reshuffles():
    a, b = epoch_order(50, 7, 0, 0), epoch_order(50, 7, 0, 0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, epoch_order(50, 7, 1, 0))
    assert sorted(a.tolist()) == list(range(50))
