import numpy as np
import pyarrow as pa

from ld4mrec_dist.rows import concat_row_stores, epoch_order, minibatches, rows_from_arrow, to_dense


def _table(users, items):
    return pa.table({"user": pa.array(users, pa.int32()), "items": pa.array(items, pa.list_(pa.int32()))})


def test_rows_from_arrow_builds_sorted_csr():
    store = rows_from_arrow(_table([5, 2], [[0, 3], [1]]), n_items=4)
    assert store.users.tolist() == [2, 5]
    assert to_dense(store.csr).tolist() == [[0, 1, 0, 0], [1, 0, 0, 1]]


def test_uneven_shards_give_equal_steps_and_sizes():
    small = concat_row_stores([rows_from_arrow(_table(list(range(0, 7)), [[0]] * 7), 3)], 3)
    large = concat_row_stores([rows_from_arrow(_table(list(range(7, 12)), [[1]] * 5), 3),
                               rows_from_arrow(_table(list(range(12, 20)), [[2]] * 8), 3)], 3)
    n_rows = min(len(small), len(large))  # what all_reduce_min_int agrees on
    sizes = []
    for rank, store in enumerate((small, large)):
        order = epoch_order(len(store), seed=1, epoch=0, rank=rank)
        sizes.append([len(u) for u, _ in minibatches(store, order, batch_size=3, n_rows=n_rows)])
    assert sizes[0] == sizes[1] == [3, 3, 1]


def test_epoch_order_is_deterministic_and_reshuffles():
    a, b = epoch_order(50, 7, 0, 0), epoch_order(50, 7, 0, 0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, epoch_order(50, 7, 1, 0))
    assert sorted(a.tolist()) == list(range(50))
