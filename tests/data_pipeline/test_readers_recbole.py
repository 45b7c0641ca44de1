"""RecBole atomic files: typed headers, string ids, .item float_seq features."""

import numpy as np
import pytest

from data_pipeline.errors import DataError
from data_pipeline.readers.recbole import read_recbole

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def test_reads_inter_and_item(tmp_path, tsv):
    tsv(tmp_path / "ml.inter", HEADER, [("u9", "b", 5, 3), ("u1", "a", 2, 1), ("u9", "c", 4, 2)])
    tsv(tmp_path / "ml.item", "item_id:token\temb:float_seq\tgenre:token",
                [("c", "3 3", "x"), ("a", "1 1", "y"), ("b", "2 2", "z")])
    src = read_recbole(tmp_path)
    assert src.format == "recbole" and src.item_ids.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(src.item_N, [1, 0, 2])
    assert list(src.features) == ["emb"]
    feat = np.concatenate([b for _, b in src.features["emb"].chunks(10)])
    np.testing.assert_array_equal(feat, [[1, 1], [2, 2], [3, 3]])


def test_untyped_header_is_an_error(tmp_path, tsv):
    tsv(tmp_path / "ml.inter", "user_id\titem_id", [("u", "i")])
    with pytest.raises(DataError, match="field:type"):
        read_recbole(tmp_path)


def test_missing_item_features(tmp_path, tsv):
    tsv(tmp_path / "ml.inter", HEADER, [("u", "a", 5, 1), ("u", "zz", 5, 2)])
    tsv(tmp_path / "ml.item", "item_id:token\temb:float_seq", [("a", "1 2")])
    with pytest.raises(DataError, match=r"ml.item: no 'emb' features .* 'zz'"):
        read_recbole(tmp_path)


def test_non_numeric_rating(tmp_path, tsv):
    tsv(tmp_path / "ml.inter", HEADER, [("u", "a", "good", 1)])
    with pytest.raises(DataError, match=r"'rating', line 2: not a number"):
        read_recbole(tmp_path)


def test_bad_float_seq_value_names_its_line(tmp_path, tsv):
    tsv(tmp_path / "ml.inter", HEADER, [("u", "a", 5, 1), ("u", "b", 5, 2)])
    tsv(tmp_path / "ml.item", "item_id:token\temb:float_seq", [("a", "1 2"), ("b", "3 x")])
    with pytest.raises(DataError, match=r"'emb', line 3: 'x' is not a number"):
        read_recbole(tmp_path)
