"""RecBole atomic files: typed headers, string ids, the .item file's float_seq fields as dense modalities."""

import numpy as np
import pytest

from data_pipeline.errors import DataError
from data_pipeline.item_fields import item_modalities, read_item_table
from data_pipeline.readers.recbole import read_recbole


def item_features(src):
    """The modalities the source's item table gives (no text encoder needed here)."""
    table = read_item_table(src.item_table, "item_id", src.item_ids)
    return item_modalities(table, encoder=lambda: pytest.fail("no text field here"), cache_dir=None)

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def test_a_missing_path_names_the_recbole_format(tmp_path):
    with pytest.raises(DataError, match="no such file or directory; pass the RecBole dataset.s directory"):
        read_recbole(tmp_path / "missing")


def test_reads_inter_and_item(tmp_path, tsv):
    tsv(tmp_path / "ml.inter", HEADER, [("u9", "b", 5, 3), ("u1", "a", 2, 1), ("u9", "c", 4, 2)])
    tsv(tmp_path / "ml.item", "item_id:token\temb:float_seq\tgenre:token",
                [("c", "3 3", "x"), ("a", "1 1", "y"), ("b", "2 2", "z")])
    src = read_recbole(tmp_path)
    assert src.format == "recbole" and src.item_ids.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(src.item_N, [1, 0, 2])
    items = item_features(src)
    assert list(items.features) == ["emb"] and src.item_table == tmp_path / "ml.item"
    assert items.fields[1]["kind"] == "skip" and "identifier" in items.fields[1]["reason"]   # x, y, z: one per item
    feat = np.concatenate([b for _, b in items.features["emb"].chunks(10)])
    z = np.sqrt(1.5)                                             # (1, 2, 3) standardised: ±1/√(2/3)
    np.testing.assert_allclose(feat, [[-z, -z], [0, 0], [z, z]], rtol=1e-6)


def test_untyped_header_is_an_error(tmp_path, tsv):
    tsv(tmp_path / "ml.inter", "user_id\titem_id", [("u", "i")])
    with pytest.raises(DataError, match="field:type"):
        read_recbole(tmp_path)


def test_an_item_without_a_row_gets_a_zero_row_and_lowers_coverage(tmp_path, tsv):
    tsv(tmp_path / "ml.inter", HEADER, [("u", "a", 5, 1), ("u", "zz", 5, 2), ("u", "b", 5, 3)])
    tsv(tmp_path / "ml.item", "item_id:token\temb:float_seq", [("a", "1 2"), ("b", "3 6")])
    items = item_features(read_recbole(tmp_path))
    np.testing.assert_array_equal(items.features["emb"].array, [[-1, -1], [1, 1], [0, 0]])
    assert items.described["emb"]["coverage"] == pytest.approx(2 / 3, abs=1e-6)
    tsv(tmp_path / "ml.item", "item_id:token\temb:float_seq", [("x", "1 2")])
    with pytest.raises(DataError, match=r"ml.item: none of its item_id values matches"):
        item_features(read_recbole(tmp_path))


def test_non_numeric_rating(tmp_path, tsv):
    tsv(tmp_path / "ml.inter", HEADER, [("u", "a", "good", 1)])
    with pytest.raises(DataError, match=r"'rating', line 2: not a number"):
        read_recbole(tmp_path)


def test_bad_float_seq_value_names_its_line(tmp_path, tsv):
    tsv(tmp_path / "ml.inter", HEADER, [("u", "a", 5, 1), ("u", "b", 5, 2)])
    tsv(tmp_path / "ml.item", "item_id:token\temb:float_seq", [("a", "1 2"), ("b", "3 x")])
    with pytest.raises(DataError, match=r"'emb', line 3: 'x' is not a number"):
        item_features(read_recbole(tmp_path))
    tsv(tmp_path / "ml.item", "item_id:token\temb:float_seq", [("a", "1 2"), ("b", "3")])
    with pytest.raises(DataError, match=r"'emb', line 3: 1 values where line 2 has 2"):
        item_features(read_recbole(tmp_path))
