"""Prepare a dataset directory from a `Source` (any reader) or the synthetic generator.

Layout: manifest.json, train|valid|test/part-*.parquet, features/<modality>.npy,
item_degree.npy, id_maps/users.parquet, id_maps/items.parquet. Everything is written into
a hidden temp dir beside the target and renamed at the end, manifest last, so an
interrupted run never leaves a directory that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from data_pipeline import storage
from data_pipeline.errors import DataError
from data_pipeline.features import write_features
from data_pipeline.manifest import FORMAT_VERSION, MANIFEST, read_manifest, write_manifest
from data_pipeline.out_dir import check_replaceable
from data_pipeline.protocol import ProtocolConfig, apply_protocol
from data_pipeline.shards import DEFAULT_ROWS_PER_SHARD, user_rows, write_shards
from data_pipeline.source import SPLIT_NAMES, Source, index_ids
from data_pipeline.storage import file_sha256
from data_pipeline.streaming import SplitsWritten, TabularLog, stream_protocol


def prepare_dataset(source: Source | TabularLog, setting: str, out: str | Path, *, seed: int = 2024,
                    overwrite: bool = False, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                    protocol: ProtocolConfig = ProtocolConfig(), progress: bool = True,
                    extra_config: dict[str, Any] | None = None) -> Path | str:
    """Apply the protocol to `source` and write the dataset directory `out`; returns its path
    (the normalised URI for an object-store `out`).

    A `TabularLog` (streaming.open_log) is prepared in bounded memory, bucket by bucket,
    except in the noisy setting (read whole: see data_pipeline/streaming.py); the dataset is
    the same either way. `out` may be an object-store URI (s3://, gs://): the dataset is then
    built in a local temporary directory and uploaded, manifest last, so it never looks
    complete early."""
    if storage.is_uri(out):
        return prepare_to_uri(source, setting, storage.normalize(out), seed=seed, overwrite=overwrite,
                              rows_per_shard=rows_per_shard, protocol=protocol, progress=progress,
                              extra_config=extra_config)
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists; pass --overwrite to replace it, or choose --out")
    if overwrite:
        check_replaceable(out, source.files)
    if rows_per_shard < 1:
        raise DataError(f"rows per shard {rows_per_shard}: must be ≥ 1")
    if isinstance(source, TabularLog) and setting == "noisy":
        source = source.materialise()
    config = run_config(source, setting, seed, rows_per_shard, protocol, extra_config)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out.parent / f".{out.name}.tmp-{tag}"
    try:
        tmp.mkdir(parents=True)
        if isinstance(source, TabularLog):
            splits = stream_protocol(source, setting, protocol, tmp, out.parent / f".{out.name}.buckets-{tag}",
                                     rows_per_shard)
        else:
            splits = write_splits(tmp, source, setting, protocol, seed, rows_per_shard)
        write_dataset(tmp, source, splits, config, progress)
        commit(tmp, out, overwrite)
    except OSError as err:  # a full disk or a read-only --out: one line naming where
        raise storage.disk_error(err.filename or tmp, err) or err from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def prepare_to_uri(source: Source | TabularLog, setting: str, out: str, *, overwrite: bool, **kwargs: Any) -> str:
    if storage.exists(out) and storage.list_dir(out) and not overwrite:
        raise DataError(f"{out}: already exists; pass --overwrite to replace it, or choose --out")
    if overwrite:
        check_replaceable(out, source.files)
    with tempfile.TemporaryDirectory(prefix="ld4mrec-prepare-") as tmp:
        local = prepare_dataset(source, setting, Path(tmp) / "dataset", **kwargs)
        if overwrite and storage.exists(out):
            fs, path = storage.filesystem(out)
            fs.delete_dir_contents(path, missing_dir_ok=True)
        storage.upload_tree(local, out, last=MANIFEST)
    return out


def run_config(source: Source | TabularLog, setting: str, seed: int, rows_per_shard: int, protocol: ProtocolConfig,
               extra: dict[str, Any] | None) -> dict[str, Any]:
    """The config recorded in the manifest (and compared when reusing a synthetic dataset)."""
    config = {"source_format": source.format, "source_name": source.name, "setting": setting, "seed": seed,
              "protocol": protocol.as_dict(), "rows_per_shard": rows_per_shard}
    return json.loads(json.dumps({**config, **(extra or {})}))


def write_splits(folder: Path, source: Source, setting: str, protocol: ProtocolConfig, seed: int,
                 rows_per_shard: int) -> SplitsWritten:
    """The in-memory path: the protocol over the whole log, then the shards of every split."""
    user_codes, user_uniques = index_ids(source.user_raw)
    result = apply_protocol(user_codes, source.item_N, source.n_items, source.rating, source.timestamp,
                            source.split, setting, protocol, seed)
    index_of = np.full(int(user_uniques.size), -1, np.int64)
    index_of[result.users] = np.arange(result.users.size)
    split_files, eval_sets = {}, {}
    for name in SPLIT_NAMES:
        users, items = result.splits[name]
        split_files[name] = write_shards(user_rows(index_of[users], items), folder / name, rows_per_shard)
        eval_sets[name] = np.unique(index_of[users])
    return SplitsWritten(
        split_files, result.counts,
        {s: int(np.intersect1d(eval_sets[s], eval_sets["train"]).size) for s in ("valid", "test")},
        np.bincount(result.splits["train"][1], minlength=source.n_items).astype(np.int64),
        user_uniques[result.users], result.split_source, result.chronology)


def write_dataset(folder: Path, source: Source | TabularLog, splits: SplitsWritten, config: dict[str, Any],
                  progress: bool) -> dict[str, Any]:
    """Beside the shards already in `folder`: features, degrees, id maps and (last) the manifest."""
    n_users, n_items = int(splits.user_ids.size), source.n_items
    np.save(folder / "item_degree.npy", splits.item_degree)
    (folder / "id_maps").mkdir()
    other = [{"file": "item_degree.npy", "sha256": file_sha256(folder / "item_degree.npy")}]
    for kind, ids in (("users", splits.user_ids), ("items", source.item_ids)):
        path = folder / "id_maps" / f"{kind}.parquet"
        pq.write_table(pa.table({"index": pa.array(np.arange(ids.size, dtype=np.int32)),
                                 "id": pa.array(ids.astype(str), pa.string())}), path, compression="zstd")
        other.append({"file": f"id_maps/{kind}.parquet", "sha256": file_sha256(path)})
    modalities = write_modalities(folder, source, progress)
    counts = splits.counts
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": source.name,
        "config": config,
        "source": {"format": source.format, "split": splits.split_source, "chronology": splits.chronology,
                   "files": [{"name": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                             for p in source.files]},
        "n_users": n_users,
        "n_items": n_items,
        "modalities": modalities,
        "counts": counts,
        "eval_users": splits.eval_users,
        "train_density": counts["rows_per_split"]["train"] / max(1, n_users * n_items),
        "files": {"splits": splits.split_files, "other": other},
    }
    write_manifest(folder, manifest)
    return manifest


def write_modalities(folder: Path, source: Source | TabularLog, progress: bool) -> list[dict[str, Any]]:
    """features/<modality>.npy for each modality, in source order; [{name, dim, file, sha256}]."""
    (folder / "features").mkdir()
    entries = []
    for name, feat in source.features.items():
        # disable=None: no bar when stderr is not a terminal (no carriage-return bars in a log)
        with tqdm(total=feat.n_rows, desc=f"features/{name}", unit="item", leave=False,
                  disable=None if progress else True) as bar:
            sha = write_features(feat, folder / "features" / f"{name}.npy", bar)
        entries.append({"name": name, "dim": feat.width, "file": f"features/{name}.npy", "sha256": sha})
    return entries


def commit(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename `tmp` to `out` (replacing it when `overwrite`)."""
    old = None
    if out.exists():
        if not overwrite:
            raise DataError(f"{out}: appeared while preparing; pass --overwrite to replace it")
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare_synthetic(shape: str, setting: str, root: str | Path, seed: int = 2024, overwrite: bool = False,
                      progress: bool = True) -> Path:
    """Generate (once) the synthetic MMRec source and prepare `root/<shape>-<setting>-seed<seed>`.

    A complete dataset already there with the same config is returned as is."""
    from data_pipeline.readers.mmrec import read_mmrec
    from data_pipeline.synthetic import GENERATOR_VERSION, generate_mmrec

    root = Path(root).resolve()
    raw = generate_mmrec(shape, root / f"synthetic-{shape}-seed{seed}" / "raw", seed=seed, progress=progress)
    out = root / f"{shape}-{setting}-seed{seed}"
    extra = {"synthetic": {"shape": shape, "seed": seed, "version": GENERATOR_VERSION}}
    expect = {**extra, "setting": setting, "seed": seed}
    if not overwrite and reusable(out, expect):
        return out
    source = read_mmrec(raw)
    try:
        return Path(prepare_dataset(source, setting, out, seed=seed, overwrite=overwrite, progress=progress,
                                    extra_config=extra))  # `out` is local: a Path comes back
    except (DataError, OSError):
        if reusable(out, expect):   # another process prepared it meanwhile
            return out
        raise


def reusable(out: Path, extra: dict[str, Any]) -> bool:
    """True when `out` holds a complete dataset whose config includes `extra` with the default protocol."""
    if not (out / MANIFEST).is_file():
        return False
    try:
        manifest, _ = read_manifest(out)
    except DataError:
        return False
    config = manifest.get("config", {})
    expected = json.loads(json.dumps(extra))
    return all(config.get(k) == v for k, v in expected.items()) \
        and config.get("protocol") == ProtocolConfig().as_dict() \
        and config.get("rows_per_shard") == DEFAULT_ROWS_PER_SHARD
