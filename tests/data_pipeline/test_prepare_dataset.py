"""Writing a dataset: layout, idempotence, atomicity, overwrite, noisy test unchanged, reuse."""

import hashlib
import json

import numpy as np
import pytest

import data_pipeline.prepare as prepare_mod
from data_pipeline.errors import DataError
from data_pipeline.prepare import prepare_dataset, prepare_synthetic
from data_pipeline.readers.mmrec import read_mmrec


def checksums(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_and_manifest(tiny_raw, tmp_path):
    out = prepare_dataset(read_mmrec(tiny_raw), "noisy", tmp_path / "ds", rows_per_shard=16, progress=False)
    names = set(checksums(out))
    assert {"manifest.json", "item_degree.npy", "id_maps/users.parquet", "id_maps/items.parquet",
            "features/text.npy", "features/image.npy", "train/part-00000.parquet", "test/part-00000.parquet"} <= names
    assert "train/part-00001.parquet" in names
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert c["input_rows"] == c["kept"] + c["filtered_by_rating"] + c["duplicates_merged"] + sum(c["dropped"].values())
    injected = c["injected_noise"]["natural"] + c["injected_noise"]["random"]
    assert sum(c["rows_per_split"].values()) == c["kept"] + injected
    assert [x["name"] for x in m["modalities"]] == ["text", "image"]
    assert {f["name"] for f in m["source"]["files"]} == {"tiny.inter", "text_feat.npy", "image_feat.npy"}
    assert len(m["source"]["files"][0]["sha256"]) == 64


def test_same_input_same_bytes(tiny_raw, tmp_path):
    a = prepare_dataset(read_mmrec(tiny_raw), "noisy", tmp_path / "a", progress=False)
    b = prepare_dataset(read_mmrec(tiny_raw), "noisy", tmp_path / "b", progress=False)
    assert checksums(a) == checksums(b)
    c = prepare_dataset(read_mmrec(tiny_raw), "noisy", tmp_path / "c", seed=5, progress=False)
    assert checksums(a)["train/part-00000.parquet"] != checksums(c)["train/part-00000.parquet"]


def test_noisy_test_split_is_the_clean_one(tiny_raw, tmp_path):
    clean = prepare_dataset(read_mmrec(tiny_raw), "clean", tmp_path / "clean", progress=False)
    noisy = prepare_dataset(read_mmrec(tiny_raw), "noisy", tmp_path / "noisy", progress=False)
    assert checksums(clean)["test/part-00000.parquet"] == checksums(noisy)["test/part-00000.parquet"]
    assert checksums(clean)["train/part-00000.parquet"] != checksums(noisy)["train/part-00000.parquet"]


def test_existing_output_needs_overwrite(tiny_raw, tmp_path):
    out = prepare_dataset(read_mmrec(tiny_raw), "clean", tmp_path / "ds", progress=False)
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        prepare_dataset(read_mmrec(tiny_raw), "clean", out, progress=False)
    prepare_dataset(read_mmrec(tiny_raw), "as_is", out, overwrite=True, progress=False)
    assert json.loads((out / "manifest.json").read_text())["config"]["setting"] == "as_is"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_interrupted_run_leaves_nothing(tiny_raw, tmp_path, monkeypatch):
    def boom(folder, manifest):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod, "write_manifest", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(read_mmrec(tiny_raw), "clean", tmp_path / "ds", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_nan_features_are_refused(make_mmrec, tmp_path):
    rows = [(u, i, 5, 10 * u + i) for u in range(3) for i in range(10)]
    feats = {"text": np.ones((10, 2))}
    feats["text"][7, 1] = np.nan
    with pytest.raises(DataError, match=r"text_feat.npy: feature row 7 .* NaN or inf"):
        prepare_dataset(read_mmrec(make_mmrec(rows, features=feats)), "clean", tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()


def test_prepare_synthetic_reuses_a_complete_dataset(tmp_path):
    out = prepare_synthetic("tiny", "clean", tmp_path, seed=3, progress=False)
    assert out == tmp_path.resolve() / "tiny-clean-seed3"
    assert (tmp_path / "synthetic-tiny-seed3" / "raw" / "tiny.inter").is_file()
    before = (out / "manifest.json").stat().st_mtime_ns
    assert prepare_synthetic("tiny", "clean", tmp_path, seed=3, progress=False) == out
    assert (out / "manifest.json").stat().st_mtime_ns == before
    noisy = prepare_synthetic("tiny", "noisy", tmp_path, seed=3, progress=False)
    assert json.loads((noisy / "manifest.json").read_text())["config"]["synthetic"]["shape"] == "tiny"
