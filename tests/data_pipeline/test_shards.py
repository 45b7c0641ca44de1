"""Parquet shards of user rows: grouping, shard sizes, byte-identical rewrites, read-back."""

import numpy as np

from data_pipeline.shards import SCHEMA, pairs_to_csr, read_pairs, user_rows, write_shards


def _pairs():
    users = np.array([0, 0, 2, 5, 5, 5, 7], np.int64)  # sorted by (user, item), user 1 has no row
    items = np.array([1, 3, 0, 0, 2, 4, 1], np.int64)
    return users, items


def test_user_rows_groups_pairs_into_one_row_per_user():
    table = user_rows(*_pairs())
    assert table.schema == SCHEMA
    assert table.column("user").to_pylist() == [0, 2, 5, 7]
    assert table.column("items").to_pylist() == [[1, 3], [0], [0, 2, 4], [1]]


def test_write_shards_splits_rows_and_reads_back_every_pair(tmp_path):
    written = write_shards(user_rows(*_pairs()), tmp_path / "train", rows_per_shard=3)
    assert [w["file"] for w in written] == ["train/part-00000.parquet", "train/part-00001.parquet"]
    assert [w["rows"] for w in written] == [3, 1]
    users, items = read_pairs([str(tmp_path / w["file"]) for w in written])
    expect_u, expect_i = _pairs()
    assert users.tolist() == expect_u.tolist() and items.tolist() == expect_i.tolist()


def test_same_rows_give_byte_identical_shards(tmp_path):
    first = write_shards(user_rows(*_pairs()), tmp_path / "a", rows_per_shard=2)
    second = write_shards(user_rows(*_pairs()), tmp_path / "b", rows_per_shard=2)
    assert [w["sha256"] for w in first] == [w["sha256"] for w in second]


def test_an_empty_split_is_one_empty_shard(tmp_path):
    written = write_shards(user_rows(np.empty(0, np.int64), np.empty(0, np.int64)), tmp_path / "valid", 4)
    assert [w["rows"] for w in written] == [0]
    users, items = read_pairs([str(tmp_path / written[0]["file"])])
    assert users.size == items.size == 0
    assert read_pairs([])[0].size == 0


def test_pairs_to_csr_is_binary_with_duplicates_merged():
    csr = pairs_to_csr(np.array([0, 0, 2]), np.array([1, 1, 3]), n_users=3, n_items=4)
    assert csr.shape == (3, 4) and csr.dtype == np.float32
    assert csr.toarray().tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
