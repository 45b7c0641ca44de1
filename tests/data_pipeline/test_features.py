"""Item feature matrices: streamed .npy in chunks, keyed rows, NaN/inf and shape errors."""

import hashlib

import numpy as np
import pytest

from data_pipeline import features
from data_pipeline.errors import DataError
from data_pipeline.features import array_feature, keyed_feature, npy_feature, write_features


@pytest.mark.parametrize("fortran", [False, True])
def test_npy_streams_to_float32_in_small_chunks(tmp_path, monkeypatch, fortran):
    rows = np.arange(35, dtype=np.float64).reshape(7, 5) / 3
    path = tmp_path / "text.npy"
    np.save(path, np.asfortranarray(rows) if fortran else rows)
    monkeypatch.setattr(features, "CHUNK_BYTES", 2 * 5 * 4)  # two rows per chunk: four chunks
    out = tmp_path / "out.npy"
    digest = write_features(npy_feature("text", path), out)
    back = np.load(out)
    assert back.dtype == np.float32 and np.array_equal(back, rows.astype(np.float32))
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()


def test_nan_in_an_npy_names_the_row(tmp_path, monkeypatch):
    rows = np.zeros((6, 3), np.float32)
    rows[4, 1] = np.nan
    np.save(tmp_path / "img.npy", rows)
    monkeypatch.setattr(features, "CHUNK_BYTES", 3 * 4)  # one row per chunk
    with pytest.raises(DataError, match=r"img\.npy: feature row 4 of modality 'image' holds NaN"):
        write_features(npy_feature("image", tmp_path / "img.npy"), tmp_path / "out.npy")


def test_keyed_rows_follow_item_order_and_errors_name_file_row_and_key(tmp_path):
    keys = np.array(["b", "a", "c"])
    rows = np.array([[2.0], [1.0], [np.inf]], np.float32)
    src = keyed_feature("text", tmp_path / "t.parquet", keys, rows, item_ids=np.array(["a", "b"]))
    assert src.n_rows == 2
    write_features(src, tmp_path / "ok.npy")
    assert np.load(tmp_path / "ok.npy").ravel().tolist() == [1.0, 2.0]

    bad = keyed_feature("text", tmp_path / "t.parquet", keys, rows, item_ids=np.array(["c"]))
    with pytest.raises(DataError, match=r"t\.parquet: feature row 2 \(item_id 'c'\)"):
        write_features(bad, tmp_path / "bad.npy")


def test_not_a_matrix_and_missing_files_are_data_errors(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(4))
    with pytest.raises(DataError, match="expected a 2-D numeric array"):
        npy_feature("text", tmp_path / "flat.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="not a valid .npy file"):
        npy_feature("text", tmp_path / "junk.npy")
    with pytest.raises(DataError, match="not found"):
        npy_feature("text", tmp_path / "absent.npy")


def test_in_memory_rows_describe_themselves_by_index(tmp_path):
    src = array_feature("image", tmp_path / "x.npy", np.ones((3, 2), np.float32))
    assert (src.n_rows, src.width, src.describe_row(2)) == (3, 2, "row 2")


def test_keyed_duplicates_and_missing_items_are_named(tmp_path):
    rows = np.zeros((3, 1), np.float32)
    with pytest.raises(DataError, match=r"item_id 'a' has more than one feature row \(rows 0 and 2\)"):
        keyed_feature("text", tmp_path / "t.parquet", np.array(["a", "b", "a"]), rows, np.array(["a"]))
    with pytest.raises(DataError, match=r"no 'text' features for 1 item\(s\).*'z'"):
        keyed_feature("text", tmp_path / "t.parquet", np.array(["a", "b", "c"]), rows, np.array(["a", "z"]))
