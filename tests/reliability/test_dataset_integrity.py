"""Tampered or damaged prepared datasets are refused with one line, never trained on.

Each case alters a copy of a tiny prepared dataset the way copies, disks and hands alter one and
checks the one-line `DatasetDamaged` error (the driver's full check, the workers' sizes
check), plus the hash cache that spares a restart from rehashing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_pipeline import verify
from data_pipeline.dataset import open_dataset
from data_pipeline.errors import DataError, DatasetDamaged
from data_pipeline.prepare import prepare_dataset
from data_pipeline.readers.mmrec import read_mmrec
from data_pipeline.synthetic import generate_mmrec
from data_pipeline.verify import CACHE_FILE, verify_dataset


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The synthetic `tiny` source (100 users × 60 items, text 8-d, image 16-d) prepared with
    30 user rows per shard (4 train shards); never modified."""
    root = tmp_path_factory.mktemp("integrity")
    raw = generate_mmrec("tiny", root / "raw", seed=7, progress=False)
    return prepare_dataset(read_mmrec(raw), "clean", root / "tiny-clean", rows_per_shard=30, progress=False)


@pytest.fixture
def ds(pristine, tmp_path) -> Path:
    """A private copy of the prepared dataset, free to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "tiny-clean"))


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def rewrite_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def flip_keeping_parquet_valid(path: Path) -> None:
    """Flip one bit of a shard such that it still reads as Parquet, with other content."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    original = path.read_bytes()
    before = pq.read_table(path)
    for offset in range(4, len(original) - 8):
        flip_byte(path, offset)
        try:
            if not pq.read_table(path).equals(before):
                return
        except (pa.ArrowException, OSError):
            pass
        path.write_bytes(original)
    raise AssertionError(f"no single bit flip of {path} keeps it valid Parquet")


def assert_damaged(err: pytest.ExceptionInfo, what: str) -> None:
    """The one shape every damage has: one line, what and which file, and the fix."""
    msg = str(err.value)
    assert isinstance(err.value, DatasetDamaged) and "\n" not in msg, msg
    assert msg.startswith("dataset is damaged: ") and what in msg, msg
    assert "— prepare it again (python jobs/prepare.py --source mmrec" in msg and "--overwrite)" in msg, msg


def test_pristine_dataset_passes_both_checks(ds):
    full = verify_dataset(ds, full=True)
    assert full.full and full.files == 17 and full.hashed_files == 17
    assert not verify_dataset(ds, full=False).hashed_files
    assert open_dataset(ds, verify="full").n_items == 60


def test_bit_flip_in_a_shard_that_stays_valid_parquet(ds):
    flip_keeping_parquet_valid(ds / "train" / "part-00000.parquet")
    open_dataset(ds)      # the workers' cheap check cannot see it (same size) ...
    with pytest.raises(DataError) as err:  # ... the driver's full check does
        open_dataset(ds, verify="full")
    assert_damaged(err, "train/part-00000.parquet does not match its sha256")


def test_byte_flip_in_a_feature_file(ds):
    flip_byte(ds / "features" / "text.npy", 200)
    with pytest.raises(DataError) as err:
        verify_dataset(ds, full=True)
    assert_damaged(err, "features/text.npy does not match its sha256")


def test_feature_file_replaced_by_a_narrower_one(ds):
    np.save(ds / "features" / "image.npy", np.zeros((60, 4), np.float32))  # manifest: 16 columns
    with pytest.raises(DataError) as err:
        open_dataset(ds)  # sizes alone catch it
    assert_damaged(err, "features/image.npy is 1088 bytes, the manifest says 3968")
    # A manifest from before sizes were recorded: the declared shape catches it.
    manifest = manifest_of(ds)
    for m in manifest["modalities"]:
        del m["bytes"]
    rewrite_manifest(ds, manifest)
    with pytest.raises(DataError) as err:
        open_dataset(ds, verify="full")
    assert_damaged(err, "features/image.npy holds float32 [60, 4], the manifest declares [n_items=60, dim=16]")
    # Even opened unchecked, the features are hashed when they are loaded.
    with pytest.raises(DataError) as err:
        open_dataset(ds, verify="none").feature("image")
    assert_damaged(err, "features/image.npy does not match its sha256")


def test_shard_entry_removed_from_the_manifest(ds):
    manifest = manifest_of(ds)
    removed = manifest["files"]["splits"]["train"].pop(1)
    rewrite_manifest(ds, manifest)
    assert open_dataset(ds, verify="none").split_csr("train").getnnz(axis=1).astype(bool).sum() < 100
    with pytest.raises(DataError) as err:
        open_dataset(ds)  # the workers' check sees the unlisted file
    assert_damaged(err, f"{removed['file']} is on disk but not listed in manifest.json")
    # The file gone as well: the row accounting no longer adds up.
    (ds / removed["file"]).unlink()
    with pytest.raises(DataError) as err:
        open_dataset(ds, verify="full")
    assert_damaged(err, "the train shards listed in manifest.json hold")
    assert f"its row accounting says {manifest['counts']['rows_per_split']['train']}" in str(err.value)


def test_truncated_shard_missing_file_and_wrong_n_items_give_the_same_error(ds):
    shard = ds / "train" / "part-00002.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    for level in ("sizes", "full"):
        with pytest.raises(DataError) as err:
            open_dataset(ds, verify=level)
        assert_damaged(err, f"train/part-00002.parquet is {len(data) // 2} bytes, the manifest says {len(data)} "
                            "(truncated or replaced)")
    # Without recorded sizes, the full check reads the footer: still the same error, no pyarrow traceback.
    manifest = manifest_of(ds)
    for entry in manifest["files"]["splits"]["train"]:
        del entry["bytes"]
    rewrite_manifest(ds, manifest)
    with pytest.raises(DataError) as err:
        open_dataset(ds, verify="full")
    assert_damaged(err, "train/part-00002.parquet is not a readable Parquet file")
    shard.write_bytes(data)

    (ds / "id_maps" / "items.parquet").unlink()
    with pytest.raises(DataError) as err:
        open_dataset(ds)
    assert_damaged(err, "id_maps/items.parquet is missing")


def test_manifest_that_is_not_json(ds):
    (ds / "manifest.json").write_text('{"format_version": 1, "n_users": ')
    with pytest.raises(DataError) as err:
        open_dataset(ds)
    msg = str(err.value)
    assert isinstance(err.value, DatasetDamaged) and "\n" not in msg
    assert msg.startswith("dataset is damaged: manifest.json is not valid JSON") and f"--out {ds} --overwrite)" in msg


@pytest.mark.parametrize("n_items", [50, 70])
def test_manifest_n_items_disagrees_with_the_data(ds, n_items):
    manifest = manifest_of(ds)
    manifest["n_items"] = n_items
    rewrite_manifest(ds, manifest)
    with pytest.raises(DataError) as err:
        open_dataset(ds, verify="full")
    assert_damaged(err, f"features/text.npy holds float32 [60, 8], the manifest declares [n_items={n_items}, dim=8]")
    if n_items < 60:  # read unchecked, the shards still refuse to build a [U, 50] matrix (no scipy traceback)
        with pytest.raises(DataError) as err:
            open_dataset(ds, verify="none").split_csr("train")
        assert_damaged(err, f"item index 59, the manifest says n_items={n_items}")


def test_hashes_are_cached_by_size_and_mtime(ds):
    first = verify_dataset(ds, full=True)
    assert first.hashed_files == 17 and (ds / CACHE_FILE).is_file()
    again = verify_dataset(ds, full=True)  # a restart: nothing rehashed
    assert again.hashed_files == 0 and again.hashed_bytes == 0
    degree = ds / "item_degree.npy"
    degree.write_bytes(degree.read_bytes())  # same content, new mtime: rehash just that file
    assert verify_dataset(ds, full=True).hashed_files == 1
    # Altered in place after being cached: the new mtime forces a rehash, which fails.
    flip_byte(ds / "valid" / "part-00000.parquet", 200)
    with pytest.raises(DataError) as err:
        verify_dataset(ds, full=True)
    assert_damaged(err, "valid/part-00000.parquet does not match its sha256")


def restore_mtime(path: Path, before: os.stat_result) -> None:
    """Give `path` back its old mtime, as `cp -p`, a restored backup or bit rot leave it."""
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_bit_rot_behind_a_cached_hash_is_caught_when_the_shard_is_read(ds, tmp_path):
    from ld4mrec_dist.config import load_config
    from ld4mrec_dist.train.trainer import prepare_run

    verify_dataset(ds, full=True)  # the cache now vouches for every file by (size, mtime)
    shard = ds / "train" / "part-00000.parquet"
    before = shard.stat()
    flip_keeping_parquet_valid(shard)  # other rows, same size
    restore_mtime(shard, before)
    assert verify_dataset(ds, full=True).hashed_files == 0  # the cache cannot see it
    opened = open_dataset(ds, verify="full")
    with pytest.raises(DataError) as err:
        opened.split_rows("train", range(0, 30))  # a rank reading its users
    assert_damaged(err, "train/part-00000.parquet does not match its sha256")
    with pytest.raises(DataError) as err:
        opened.split_csr("train")  # the driver's SVD input
    assert_damaged(err, "train/part-00000.parquet does not match its sha256")
    assert opened.split_rows("train", range(90, 100)).shape == (10, 60)  # a rank that never reads it
    cfg = load_config(overrides=[f"data.path={ds}", f"run.storage={tmp_path / 'runs'}", "scaling.num_workers=0"])
    with pytest.raises(DataError) as err:
        prepare_run(cfg)  # the training driver stops before any run directory or worker
    assert_damaged(err, "train/part-00000.parquet does not match its sha256")
    assert not (tmp_path / "runs").exists()


def test_nan_written_into_a_cached_feature_file_is_named_when_it_is_loaded(ds):
    verify_dataset(ds, full=True)
    text = ds / "features" / "text.npy"
    before = text.stat()
    rows = np.load(text)
    rows[3, 2] = np.nan
    np.save(text, rows)  # same header, same size
    restore_mtime(text, before)
    opened = open_dataset(ds, verify="full")  # sizes, shapes and the cached hashes all pass
    with pytest.raises(DataError) as err:
        opened.feature("text")  # what the model builder calls: never a "non-finite loss" later
    assert_damaged(err, "features/text.npy does not match its sha256")
    assert opened.feature("image").shape == (60, 16)


def test_datasets_prepared_before_sizes_were_recorded_are_checked_on_read_too(ds):
    """Every manifest lists each file's sha256, so older datasets need no new field."""
    manifest = manifest_of(ds)
    for entries in manifest["files"]["splits"].values():
        for entry in entries:
            del entry["bytes"]
    rewrite_manifest(ds, manifest)
    opened = open_dataset(ds)
    assert opened.split_csr("train").nnz > 0
    flip_keeping_parquet_valid(ds / "test" / "part-00001.parquet")
    with pytest.raises(DataError) as err:
        opened.split_csr("test")
    assert_damaged(err, "test/part-00001.parquet does not match its sha256")


def test_damaged_id_map_and_item_degrees_are_refused_when_read(ds):
    opened = open_dataset(ds, verify="none")
    flip_byte(ds / "item_degree.npy", 200)
    with pytest.raises(DataError) as err:
        _ = opened.item_degree
    assert_damaged(err, "item_degree.npy does not match its sha256")
    flip_keeping_parquet_valid(ds / "id_maps" / "items.parquet")
    with pytest.raises(DataError) as err:
        _ = opened.item_ids
    assert_damaged(err, "id_maps/items.parquet does not match its sha256")


def test_hash_cache_falls_back_to_the_user_cache(ds, tmp_path, monkeypatch):
    (ds / CACHE_FILE).mkdir()  # the dataset folder cannot take the cache file
    monkeypatch.setattr(verify, "USER_CACHE", str(tmp_path / "user-cache"))
    assert verify_dataset(ds, full=True).hashed_files == 17
    assert len(list((tmp_path / "user-cache").glob("*.json"))) == 1
    assert verify_dataset(ds, full=True).hashed_files == 0


def test_training_driver_refuses_a_tampered_dataset(ds, tmp_path):
    from ld4mrec_dist.config import load_config
    from ld4mrec_dist.train.trainer import prepare_run

    flip_keeping_parquet_valid(ds / "train" / "part-00000.parquet")
    cfg = load_config(overrides=[f"data.path={ds}", f"run.storage={tmp_path / 'runs'}", "scaling.num_workers=0"])
    with pytest.raises(DataError) as err:
        prepare_run(cfg)
    assert_damaged(err, "train/part-00000.parquet does not match its sha256")


def test_training_worker_checks_sizes(ds, tmp_path):
    from ld4mrec_dist.config import config_to_dict, load_config
    from ld4mrec_dist.train.loop import WorkerInput, train_loop_per_worker

    shard = ds / "test" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    cfg = load_config(overrides=[f"data.path={ds}", "scaling.num_workers=0"])
    with pytest.raises(DataError) as err:
        train_loop_per_worker(WorkerInput(config_to_dict(cfg), str(ds), str(tmp_path), "ddp").as_dict())
    assert_damaged(err, "test/part-00000.parquet is")


def test_dataset_on_object_storage(pristine, s3_bucket):
    from data_pipeline import storage

    uri = f"s3://{s3_bucket}/integrity/tiny-clean"
    storage.upload_tree(pristine, uri, last="manifest.json")
    check = verify_dataset(uri, full=True)  # small: hashed as well
    assert check.hashed_files == 17
    shard = f"{uri}/train/part-00001.parquet"
    data = bytearray(storage.read_bytes(shard))
    data[200] ^= 0x01
    storage.write_bytes(shard, bytes(data))
    open_dataset(uri)
    with pytest.raises(DataError) as err:
        open_dataset(uri, verify="full")
    assert_damaged(err, "train/part-00001.parquet does not match its sha256")
    storage.write_bytes(shard, bytes(data[:100]))
    with pytest.raises(DataError) as err:
        open_dataset(uri)
    assert_damaged(err, "train/part-00001.parquet is 100 bytes")


def test_a_damaged_download_of_remote_features_is_fetched_again(pristine, s3_bucket, tmp_path, monkeypatch):
    from data_pipeline import dataset, storage

    monkeypatch.setattr(dataset, "FEATURE_CACHE", str(tmp_path / "feature-cache"))
    uri = f"s3://{s3_bucket}/refetch/tiny-clean"
    storage.upload_tree(pristine, uri, last="manifest.json")
    expected = np.load(pristine / "features" / "text.npy")
    assert np.array_equal(open_dataset(uri).feature("text"), expected)
    cached = next((tmp_path / "feature-cache").rglob("text.npy"))
    flip_byte(cached, 200)  # the local copy rots, the object store holds the good one
    assert np.array_equal(open_dataset(uri).feature("text"), expected)
    data = bytearray(storage.read_bytes(f"{uri}/features/text.npy"))
    data[200] ^= 0x01
    storage.write_bytes(f"{uri}/features/text.npy", bytes(data))  # now the source itself is damaged
    flip_byte(cached, 300)
    with pytest.raises(DataError) as err:
        open_dataset(uri).feature("text")
    assert_damaged(err, "features/text.npy (its local copy")
