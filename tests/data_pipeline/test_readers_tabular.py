"""Generic CSV / Parquet interactions with a column mapping and keyed or .npy features."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.errors import DataError
from data_pipeline.readers.tabular import ColumnMap, FeatureFile, read_tabular


def write_csv(path, text):
    path.write_text(text)
    return path


def test_csv_with_mapping_and_parquet_features(tmp_path):
    inter = write_csv(tmp_path / "r.csv", "uid,iid,stars,when,part\nx,10,5,1,train\ny,7,4,2,test\nx,7,1,3,valid\n")
    pq.write_table(pa.table({"sku": ["7", "10", "99"], "vec": [[0.0, 1.0], [2.0, 3.0], [9.0, 9.0]]}),
                   tmp_path / "t.parquet")
    src = read_tabular(inter, ColumnMap("uid", "iid", "stars", "when", "part"),
                       (FeatureFile("text", tmp_path / "t.parquet", "sku"),))
    assert src.item_ids.tolist() == ["7", "10"]          # numeric id order
    np.testing.assert_array_equal(src.item_N, [1, 0, 0])
    np.testing.assert_array_equal(src.split, [0, 2, 1])
    feat = next(src.features["text"].chunks(10))[1]
    np.testing.assert_array_equal(feat, [[0, 1], [2, 3]])


def test_parquet_interactions_and_npy_features(tmp_path):
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [0, 2], "rating": [5.0, 4.0],
                             "timestamp": [1, 2]}), tmp_path / "r.parquet")
    np.save(tmp_path / "img.npy", np.ones((3, 4), np.float32))
    src = read_tabular(tmp_path / "r.parquet", features=(FeatureFile("image", tmp_path / "img.npy"),))
    assert src.n_items == 3 and src.features["image"].width == 4 and src.format == "parquet"


def test_npy_features_need_integer_ids_in_range(tmp_path):
    inter = write_csv(tmp_path / "r.csv", "user_id,item_id\n1,5\n")
    np.save(tmp_path / "img.npy", np.ones((3, 4), np.float32))
    with pytest.raises(DataError, match=r"item id 5 has no row in .*img.npy"):
        read_tabular(inter, features=(FeatureFile("image", tmp_path / "img.npy"),))


def test_asked_for_column_must_exist(tmp_path):
    inter = write_csv(tmp_path / "r.csv", "user_id,item_id\n1,5\n")
    with pytest.raises(DataError, match=r"no column 'stars' \(from --col-rating\)"):
        read_tabular(inter, ColumnMap(rating="stars"))
    with pytest.raises(DataError, match=r"missing column\(s\) \['user'\]"):
        read_tabular(inter, ColumnMap(user="user"))


def test_non_numeric_timestamp_and_empty_id(tmp_path):
    inter = write_csv(tmp_path / "r.csv", "user_id,item_id,timestamp\n1,5,10\n1,6,soon\n")
    with pytest.raises(DataError, match=r"'timestamp', line 3"):
        read_tabular(inter)
    inter = write_csv(tmp_path / "s.csv", "user_id,item_id\n1,\n")
    with pytest.raises(DataError, match=r"'item_id', line 2: empty id"):
        read_tabular(inter)


def test_keyed_feature_duplicates_and_bad_split_label(tmp_path):
    inter = write_csv(tmp_path / "r.csv", "user_id,item_id,part\n1,5,train\n")
    pq.write_table(pa.table({"item_id": ["5", "5"], "a": [1.0, 2.0]}), tmp_path / "f.parquet")
    with pytest.raises(DataError, match="more than one feature row"):
        read_tabular(inter, features=(FeatureFile("text", tmp_path / "f.parquet"),))
    inter = write_csv(tmp_path / "s.csv", "user_id,item_id,part\n1,5,holdout\n")
    with pytest.raises(DataError, match="split label 'holdout'"):
        read_tabular(inter, ColumnMap(split="part"))
