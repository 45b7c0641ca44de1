"""Is a prepared dataset still what its manifest says? Checked before anything trains on it.

Two depths:

- sizes (`full=False`, cheap: one directory listing): every listed file present with the
  size the manifest records, and no shard on disk that the manifest does not list. Workers
  run this when they open the dataset.
- full (`full=True`, once per dataset in the driver): the above, then the declared shapes
  (feature arrays [n_items, dim] float32, item degrees [n_items], id maps of n_users and
  n_items rows), the row accounting (each shard's rows, each split's interactions against
  `counts.rows_per_split`, user and item indices in range, all from Parquet footers), and
  the sha256 of every file. Hashes are cached by (file, size, mtime) in `.verified.json`
  inside the dataset (or, when that is not writable, in a user cache directory), so a
  restart does not rehash gigabytes. On object storage (s3://, gs://) the hashes are
  computed only when the dataset is small (`REMOTE_HASH_LIMIT`); sizes, shapes and the
  accounting are always checked, and remote hashes are never cached (object stores give
  mtimes to the second, so a same-size rewrite could pass for the cached file).

The cache cannot see a change that keeps size and mtime (bit rot, `cp -p`, a restored
backup): `PreparedDataset` therefore also checks every file's sha256 when it reads it
(shards, id maps and degrees as read, features once per process before they are mapped).

Every failure is one `DatasetDamaged` line: "dataset is damaged: <what, which file> —
prepare it again (python jobs/prepare.py …)".
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline import storage
from data_pipeline.errors import DataError, DatasetDamaged
from data_pipeline.manifest import MANIFEST, listed_entries, read_manifest
from data_pipeline.storage import Location

CACHE_FILE = ".verified.json"
CACHE_VERSION = 1
# Where hash caches go when the dataset folder is not writable (and for object storage).
USER_CACHE = os.environ.get("LD4MREC_VERIFY_CACHE", str(Path("~/.cache/ld4mrec/verified").expanduser()))
# On object storage, hash every file only when the whole dataset is at most this big.
REMOTE_HASH_LIMIT = 256 << 20
SPLITS = ("train", "valid", "test")


@dataclass
class Verification:
    """What a check covered (for logs and measurements)."""

    files: int
    bytes: int
    hashed_files: int
    hashed_bytes: int
    seconds: float
    full: bool


@dataclass(frozen=True)
class _Stat:
    size: int
    mtime_ns: int | None


def verify_dataset(location: Location, full: bool = True, manifest: dict[str, Any] | None = None,
                   manifest_raw: bytes | None = None) -> Verification:
    """Check the dataset at `location` (local or URI) against its manifest; DatasetDamaged at the
    first mismatch. `full=False` checks presence and sizes only (see the module docstring)."""
    t0 = time.perf_counter()
    location = storage.normalize(location)
    if manifest is None:
        manifest, manifest_raw = read_manifest(location)
    again = prepare_again(manifest, location)
    try:
        entries = listed_entries(manifest)
        n_users, n_items = int(manifest["n_users"]), int(manifest["n_items"])
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetDamaged(f"{MANIFEST} lacks or mangles field {err}", again) from None
    on_disk = _listing(location)
    _check_presence_and_sizes(entries, on_disk, again)
    _check_unlisted_shards(entries, on_disk, again)
    hashed = (0, 0)
    if full:
        _check_shapes(location, manifest, n_users, n_items, on_disk, again)
        _check_accounting(location, manifest, n_users, n_items, again)
        hashed = _check_hashes(location, entries, on_disk, again)
    return Verification(files=len(entries), bytes=sum(on_disk[f].size for f in entries), hashed_files=hashed[0],
                        hashed_bytes=hashed[1], seconds=time.perf_counter() - t0, full=full)


def prepare_again(manifest: dict[str, Any], location: str) -> str:
    """The jobs/prepare.py command that rebuilds this dataset (as far as the manifest tells)."""
    config = manifest.get("config") or {}
    setting, seed = config.get("setting", "<setting>"), config.get("seed", 2024)
    synthetic = config.get("synthetic")
    if isinstance(synthetic, dict):
        return (f"python jobs/prepare.py --source synthetic --shape {synthetic.get('shape')} --setting {setting} "
                f"--seed {seed} --out {storage.parent_of(location)} --overwrite")
    fmt = config.get("source_format", "<format>")
    return (f"python jobs/prepare.py --source {fmt} --path <the original {fmt} input> --setting {setting} "
            f"--seed {seed} --out {location} --overwrite")


# ------------------------------------------------------------------ sizes (cheap)


def _listing(location: str) -> dict[str, _Stat]:
    """relative path (forward slashes) -> size and mtime of every file under the dataset."""
    try:
        infos = storage.files_under(location)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{location}: cannot be listed ({err}); check the location and its credentials") from None
    return {rel: _Stat(int(info.size), info.mtime_ns) for rel, info in infos.items()}


def _check_presence_and_sizes(entries: dict[str, tuple[str, int | None]], on_disk: dict[str, _Stat],
                              again: str) -> None:
    missing = [f for f in entries if f not in on_disk]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetDamaged(f"{missing[0]} is missing{more}", again)
    for f, (_, size) in entries.items():
        if size is not None and on_disk[f].size != size:
            how = "truncated" if on_disk[f].size < size else "grown"
            raise DatasetDamaged(f"{f} is {on_disk[f].size} bytes, the manifest says {size} ({how} or replaced)",
                                 again)


def _check_unlisted_shards(entries: dict[str, Any], on_disk: dict[str, _Stat], again: str) -> None:
    """A shard on disk the manifest does not list: its users would silently not be trained on."""
    for f in sorted(on_disk):
        split, _, name = f.partition("/")
        if split in SPLITS and name.endswith(".parquet") and "/" not in name and f not in entries:
            raise DatasetDamaged(f"{f} is on disk but not listed in {MANIFEST}", again)


# ------------------------------------------------------------------ shapes and accounting (footers)


def _check_shapes(location: str, manifest: dict[str, Any], n_users: int, n_items: int, on_disk: dict[str, _Stat],
                  again: str) -> None:
    for m in manifest["modalities"]:
        _check_npy(location, m["file"], (n_items, int(m["dim"])), np.dtype("<f4"), on_disk, again,
                   f"[n_items={n_items}, dim={m['dim']}]")
    _check_npy(location, "item_degree.npy", (n_items,), np.dtype("<i8"), on_disk, again, f"[n_items={n_items}]")
    for kind, n in (("users", n_users), ("items", n_items)):
        rel = f"id_maps/{kind}.parquet"
        rows = _parquet_metadata(location, rel, again).num_rows
        if rows != n:
            raise DatasetDamaged(f"{rel} maps {rows} ids, the manifest says n_{kind}={n}", again)


def _check_npy(location: str, rel: str, shape: tuple[int, ...], dtype: np.dtype, on_disk: dict[str, _Stat],
               again: str, declared: str) -> None:
    found_shape, found_dtype, offset = _npy_header(location, rel, again)
    if found_shape != shape or found_dtype != dtype:
        raise DatasetDamaged(f"{rel} holds {dtype_shape(found_dtype, found_shape)}, the manifest declares "
                             f"{declared} {dtype.name}", again)
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if rel in on_disk and on_disk[rel].size != expected:
        raise DatasetDamaged(f"{rel} is {on_disk[rel].size} bytes, its header needs {expected} "
                             "(truncated or padded)", again)


def dtype_shape(dtype: np.dtype, shape: tuple[int, ...]) -> str:
    return f"{dtype.name} [{', '.join(str(s) for s in shape)}]"


def _npy_header(location: str, rel: str, again: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from the first bytes of an .npy file."""
    fs, path = storage.filesystem(storage.join(location, *rel.split("/")))
    try:
        with fs.open_input_file(path) as fh:
            head = fh.read(min(fh.size(), 1 << 16))
        buf = io.BytesIO(head)
        version = np.lib.format.read_magic(buf)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(buf)
    except (ValueError, OSError, pa.ArrowException) as err:
        raise DatasetDamaged(f"{rel} is not a readable .npy file ({str(err).splitlines()[0]})", again) from None
    if fortran:
        raise DatasetDamaged(f"{rel} is Fortran-ordered; prepared datasets write C order", again)
    return tuple(int(s) for s in shape), dtype, buf.tell()


def _parquet_metadata(location: str, rel: str, again: str) -> pq.FileMetaData:
    fs, path = storage.filesystem(storage.join(location, *rel.split("/")))
    try:
        with fs.open_input_file(path) as fh:
            return pq.ParquetFile(fh).metadata
    except (OSError, pa.ArrowException) as err:
        raise DatasetDamaged(f"{rel} is not a readable Parquet file ({str(err).splitlines()[0]})", again) from None


def _check_accounting(location: str, manifest: dict[str, Any], n_users: int, n_items: int, again: str) -> None:
    """Each shard's rows as listed, each split's interactions as counted, indices in range."""
    rows_per_split = manifest["counts"]["rows_per_split"]
    for split in SPLITS:
        interactions = 0
        for entry in manifest["files"]["splits"].get(split, []):
            meta = _parquet_metadata(location, entry["file"], again)
            if meta.num_rows != entry["rows"]:
                raise DatasetDamaged(f"{entry['file']} holds {meta.num_rows} user rows, the manifest says "
                                     f"{entry['rows']}", again)
            interactions += _shard_interactions(entry["file"], meta, n_users, n_items, again)
        if interactions != rows_per_split[split]:
            raise DatasetDamaged(f"the {split} shards listed in {MANIFEST} hold {interactions} interactions, its "
                                 f"row accounting says {rows_per_split[split]} (a shard missing from the list?)",
                                 again)


def _shard_interactions(rel: str, meta: pq.FileMetaData, n_users: int, n_items: int, again: str) -> int:
    """Interactions in one shard (values of its item lists), after checking index ranges."""
    total = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        columns = {group.column(j).path_in_schema: group.column(j) for j in range(group.num_columns)}
        if set(columns) != {"user", "items.list.element"}:
            raise DatasetDamaged(f"{rel} has columns {sorted(columns)}, a shard has user and items", again)
        total += columns["items.list.element"].num_values
        for column, n, what in ((columns["user"], n_users, "n_users"), (columns["items.list.element"], n_items,
                                                                        "n_items")):
            stats = column.statistics
            if stats is not None and stats.has_min_max and (stats.min < 0 or stats.max >= n):
                raise DatasetDamaged(f"{rel} holds {column.path_in_schema.split('.')[0]} indices up to "
                                     f"{stats.max}, the manifest says {what}={n}", again)
    return total


# ------------------------------------------------------------------ hashes (cached)


def _check_hashes(location: str, entries: dict[str, tuple[str, int | None]], on_disk: dict[str, _Stat],
                  again: str) -> tuple[int, int]:
    """(files hashed, bytes hashed) now; files whose (size, mtime) match a cached good hash are skipped."""
    remote = storage.is_uri(location)
    if remote and sum(on_disk[f].size for f in entries) > REMOTE_HASH_LIMIT:
        return 0, 0
    # Object stores report mtimes to the second: a same-size rewrite within that second
    # would hit the cache, so remote datasets (hashed only when small) are always rehashed.
    cache_paths = [] if remote else _cache_paths(location)
    cached = _read_cache(cache_paths)
    good: dict[str, dict[str, Any]] = {}
    n_files = n_bytes = 0
    for f, (sha, _) in entries.items():
        stat = on_disk[f]
        hit = cached.get(f)
        if (hit and stat.mtime_ns is not None and hit.get("sha256") == sha and hit.get("bytes") == stat.size
                and hit.get("mtime_ns") == stat.mtime_ns):
            good[f] = hit
            continue
        found = _sha256(storage.join(location, *f.split("/")))
        n_files, n_bytes = n_files + 1, n_bytes + stat.size
        if found != sha:
            raise DatasetDamaged(f"{f} does not match its sha256 in {MANIFEST} (altered after it was prepared)",
                                 again)
        if stat.mtime_ns is not None:
            good[f] = {"bytes": stat.size, "mtime_ns": stat.mtime_ns, "sha256": sha}
    if n_files and cache_paths:
        _write_cache(cache_paths, good)
    return n_files, n_bytes


def _sha256(location: str) -> str:
    if not storage.is_uri(location):
        return storage.file_sha256(location)
    fs, path = storage.filesystem(location)
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as fh:
        for piece in iter(lambda: fh.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _cache_paths(location: str) -> list[Path]:
    """Where the hash cache may live, in order of preference."""
    user = Path(USER_CACHE).expanduser() / f"{hashlib.sha256(location.encode()).hexdigest()[:32]}.json"
    return [Path(location) / CACHE_FILE, user]


def _read_cache(paths: list[Path]) -> dict[str, dict[str, Any]]:
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("version") == CACHE_VERSION and isinstance(data.get("files"), dict):
            return data["files"]
    return {}


def _write_cache(paths: list[Path], files: dict[str, dict[str, Any]]) -> None:
    """Atomically, to the first writable place; a cache that cannot be written only costs a rehash."""
    text = json.dumps({"version": CACHE_VERSION, "files": files}, indent=1, sort_keys=True)
    for path in paths:
        try:
            storage.write_text(str(path), text)
            return
        except OSError:
            continue
