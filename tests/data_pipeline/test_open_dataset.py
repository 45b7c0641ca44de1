"""The trainer's view: open_dataset and PreparedDataset."""

import json

import numpy as np
import pytest

from data_pipeline.dataset import open_dataset
from data_pipeline.errors import DataError
from data_pipeline.prepare import prepare_dataset
from data_pipeline.readers.tabular import read_tabular


@pytest.fixture
def csv_dataset(tmp_path):
    """A tiny CSV source with string user ids, prepared with 3 rows per shard."""
    rng = np.random.default_rng(0)
    lines = ["user_id,item_id,rating,timestamp"]
    for u in range(9):
        for k, i in enumerate(rng.permutation(15)[:10]):
            lines.append(f"user{u},{100 + i},{rng.integers(3, 6)},{k}")
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    return prepare_dataset(read_tabular(tmp_path / "r.csv"), "noisy", tmp_path / "ds", rows_per_shard=3,
                           progress=False)


def test_public_api(csv_dataset):
    ds = open_dataset(str(csv_dataset))
    assert ds.path == csv_dataset and ds.n_items == 15 and ds.modalities == []
    assert len(ds.manifest_sha256) == 64
    files = ds.split_files("train")
    assert files == sorted(files) and len(files) == 3 and all(f.startswith("/") for f in files)
    train = ds.split_csr("train")
    assert train.shape == (ds.n_users, ds.n_items) and train.dtype == np.float32
    assert set(np.unique(train.data)) == {1.0}
    np.testing.assert_array_equal(ds.item_degree, np.asarray(train.sum(axis=0)).ravel())
    assert ds.item_degree.dtype == np.int64
    assert ds.user_ids.tolist() == [f"user{u}" for u in range(9)]
    assert ds.item_ids[0] == "100"
    test = ds.split_csr("test")
    expected = np.flatnonzero((np.diff(test.indptr) > 0) & (np.diff(train.indptr) > 0))
    np.testing.assert_array_equal(ds.eval_users("test"), expected)
    assert ds.eval_users("test").dtype == np.int64
    m = ds.manifest
    assert train.nnz == m["counts"]["rows_per_split"]["train"]


def test_features_are_float32_rows(tiny_raw, tmp_path):
    from data_pipeline.readers.mmrec import read_mmrec

    ds = open_dataset(prepare_dataset(read_mmrec(tiny_raw), "clean", tmp_path / "ds", progress=False))
    feat = ds.feature("image")
    assert feat.dtype == np.float32 and feat.shape == (ds.n_items, 16)
    np.testing.assert_array_equal(feat, np.load(tiny_raw / "image_feat.npy"))
    with pytest.raises(DataError, match="no modality 'audio'"):
        ds.feature("audio")


def test_missing_incomplete_or_unknown_version(csv_dataset, tmp_path):
    with pytest.raises(DataError, match="no manifest.json"):
        open_dataset(tmp_path / "nowhere")
    (csv_dataset / "valid" / "part-00000.parquet").unlink()
    with pytest.raises(DataError, match="dataset is damaged: valid/part-00000.parquet is missing"):
        open_dataset(csv_dataset)
    manifest = json.loads((csv_dataset / "manifest.json").read_text())
    manifest["format_version"] = 99
    (csv_dataset / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="format version 99"):
        open_dataset(csv_dataset)
