"""A prepared dataset directory, read-only: what the trainer opens.

`open_dataset(location, verify=...)` checks the manifest (format version; then, by default,
every listed file present with its recorded size; `verify="full"` also shapes, row
accounting and sha256, see `verify.py`) and gives the splits as shard paths or binary CSR
matrices, the item features, the train item degrees and the id maps (index -> original
id). The location is a local directory or an object-store URI (s3://, gs://): shards are
then read in place through pyarrow's filesystems; item features, which the model
memory-maps, are downloaded once per machine into a cache keyed by the manifest's sha256.
Whatever the open-time check found, every file is compared with its manifest sha256 when
it is read (see `_check_sha256`): a read never trusts a cached verdict.
"""

from __future__ import annotations

import hashlib
import io
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from data_pipeline import storage
from data_pipeline.errors import DataError, DatasetDamaged
from data_pipeline.manifest import MANIFEST, listed_entries, read_manifest
from data_pipeline.shards import pairs_to_csr, read_pairs
from data_pipeline.source import SPLIT_NAMES
from data_pipeline.verify import Verification, prepare_again, verify_dataset

VERIFY_LEVELS = ("full", "sizes", "none")

# Where item features of datasets on object storage are cached for memory-mapping.
FEATURE_CACHE = os.environ.get("LD4MREC_CACHE", str(Path("~/.cache/ld4mrec/features").expanduser()))


class PreparedDataset:
    """One prepared dataset: users 0..n_users-1, items 0..n_items-1."""

    def __init__(self, location: str | Path, verify: str = "sizes"):
        if verify not in VERIFY_LEVELS:
            raise ValueError(f"verify={verify!r}: choose one of {VERIFY_LEVELS}")
        self.location = storage.normalize(location)
        self.name = storage.name_of(self.location)
        # A Path for a local directory; the URI string itself for an object store.
        self.path = self.location if storage.is_uri(self.location) else Path(self.location)
        self.manifest, raw = read_manifest(self.location)
        self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
        self.verification: Verification | None = None
        if verify != "none":
            self.verification = verify_dataset(self.location, full=verify == "full", manifest=self.manifest,
                                               manifest_raw=raw)
        self.n_users = int(self.manifest["n_users"])
        self.n_items = int(self.manifest["n_items"])
        self.modalities = [m["name"] for m in self.manifest["modalities"]]
        try:
            self._sha256 = {rel: sha for rel, (sha, _) in listed_entries(self.manifest).items()}
        except (KeyError, TypeError, AttributeError) as err:
            raise self._damaged(f"{MANIFEST} lacks or mangles field {err}") from None
        self._relative = {self._file(rel): rel for rel in self._sha256}  # location -> manifest name
        self._vouched: set[str] = set()

    def __repr__(self) -> str:
        return (f"PreparedDataset({str(self.path)!r}, users={self.n_users}, items={self.n_items}, "
                f"modalities={self.modalities})")

    @property
    def feature_dims(self) -> list[int]:
        """D_m of each modality, in `modalities` order (from the manifest: nothing is read)."""
        return [int(m["dim"]) for m in self.manifest["modalities"]]

    def feature(self, name: str) -> np.ndarray:
        """float32 [n_items, d_m], memory-mapped."""
        if name not in self.modalities:
            raise DataError(f"{self.path}: no modality {name!r}; it has {self.modalities}")
        rel = f"features/{name}.npy"
        local = storage.local_copy(self._file(rel), FEATURE_CACHE, self.manifest_sha256)
        if rel not in self._vouched:  # hashed once per process; the memory map shares the pages
            found = storage.file_sha256(local)
            if found != self._sha256[rel] and str(local) != self._file(rel):  # a damaged download: fetch again
                local.unlink()
                local = storage.local_copy(self._file(rel), FEATURE_CACHE, self.manifest_sha256)
                found = storage.file_sha256(local)
            self._check_sha256(rel, found, local)
            self._vouched.add(rel)
        rows_ID = np.load(local, mmap_mode="r")
        dim = next(int(m["dim"]) for m in self.manifest["modalities"] if m["name"] == name)
        if rows_ID.shape != (self.n_items, dim):
            raise self._damaged(f"features/{name}.npy holds {list(rows_ID.shape)}, the manifest declares "
                                f"[n_items={self.n_items}, dim={dim}]")
        return rows_ID

    @cached_property
    def item_degree(self) -> np.ndarray:
        """int64 [n_items]: train-split degree of each item."""
        return np.load(io.BytesIO(self._verified_bytes("item_degree.npy")))

    def split_files(self, split: str) -> list[str]:
        """Sorted absolute paths of the split's Parquet shards."""
        self._check_split(split)
        return sorted(self._file(entry["file"]) for entry in self.manifest["files"]["splits"][split])

    def split_csr(self, split: str) -> sp.csr_matrix:
        """Binary float32 CSR [n_users, n_items] of the split."""
        users, items = read_pairs(self.split_files(split), check=self._check_shard)
        # Out-of-range indices would be a scipy traceback (or silently new rows) otherwise.
        if users.size and (users.min() < 0 or users.max() >= self.n_users):
            raise self._damaged(f"the {split} shards hold user index {int(users.max())}, the manifest says "
                                f"n_users={self.n_users}")
        self._check_items(split, items)
        return pairs_to_csr(users, items, self.n_users, self.n_items)

    def split_rows(self, split: str, users: range) -> sp.csr_matrix:
        """Binary float32 CSR [len(users), n_items]: the split's rows of the users in the
        contiguous range `users` (row r is user users.start + r). Only the shards and row
        groups whose user statistics overlap the range are read (the shards are sorted by
        user), so a rank holding a 1/W range reads about 1/W of the split."""
        if users.step != 1:
            raise ValueError(f"users={users}: a contiguous range (step 1) is needed")
        lo, hi = max(users.start, 0), min(users.stop, self.n_users)
        files = self.split_files(split)
        if not files or hi <= lo:
            return sp.csr_matrix((max(hi - lo, 0), self.n_items), dtype=np.float32)
        users_in, items = read_pairs(files, user_range=(lo, hi), check=self._check_shard)
        self._check_items(split, items)
        return pairs_to_csr(users_in - lo, items, hi - lo, self.n_items)

    @cached_property
    def user_ids(self) -> np.ndarray:
        """str [n_users]: index -> original user id."""
        return self._ids("users")

    @cached_property
    def item_ids(self) -> np.ndarray:
        """str [n_items]: index -> original item id."""
        return self._ids("items")

    def eval_users(self, split: str) -> np.ndarray:
        """int64: users with ≥ 1 item in `split` and ≥ 1 train item."""
        self._check_split(split)
        return np.intersect1d(self.users_in(split), self.users_in("train")).astype(np.int64)

    def users_in(self, split: str) -> np.ndarray:
        """int64, sorted: the users with ≥ 1 item in `split`."""
        self._check_split(split)
        return np.unique(read_pairs(self.split_files(split), check=self._check_shard)[0])

    def _ids(self, kind: str) -> np.ndarray:
        table = pq.read_table(pa.BufferReader(self._verified_bytes(f"id_maps/{kind}.parquet")))
        ids = np.empty(table.num_rows, dtype=object)
        ids[table.column("index").to_numpy()] = table.column("id").to_pylist()
        return ids.astype(str)

    def _file(self, relative: str) -> str:
        """The location of a file of the dataset (`relative` uses forward slashes)."""
        return storage.join(self.location, *relative.split("/"))

    def _verified_bytes(self, relative: str) -> bytes:
        """A file's bytes, once they match the manifest's sha256 (DatasetDamaged naming it if not)."""
        data = storage.read_bytes(self._file(relative))
        self._check_sha256(relative, hashlib.sha256(data).hexdigest(), self._file(relative))
        return data

    def _check_shard(self, location: str, data: bytes) -> None:
        rel = self._relative[location]
        self._check_sha256(rel, hashlib.sha256(data).hexdigest(), location)

    def _check_sha256(self, relative: str, found: str, where: str | Path) -> None:
        """Every read checks what it read, not a cached (size, mtime): bit rot and a file
        restored with its old mtime are caught when it is used (cost: docs/reliability.md)."""
        if found != self._sha256[relative]:
            copy = f" (its local copy {where})" if str(where) != self._file(relative) else ""
            raise self._damaged(f"{relative}{copy} does not match its sha256 in {MANIFEST} (changed since it was "
                                "prepared: bit rot, or a copy or restore that kept its size and mtime)")

    def _damaged(self, what: str) -> DatasetDamaged:
        return DatasetDamaged(what, prepare_again(self.manifest, self.location))

    def _check_items(self, split: str, items: np.ndarray) -> None:
        """DatasetDamaged if a shard holds an item index outside 0..n_items-1."""
        if items.size and (items.min() < 0 or items.max() >= self.n_items):
            raise self._damaged(f"the {split} shards hold item index {int(items.max())}, the manifest says "
                                f"n_items={self.n_items}")

    def _check_split(self, split: str) -> None:
        if split not in SPLIT_NAMES:
            raise DataError(f"split {split!r}: choose one of {SPLIT_NAMES}")


def open_dataset(location: str | Path, verify: str = "sizes") -> PreparedDataset:
    """Open a prepared dataset (local directory or s3://, gs://, file:// URI); DataError if
    missing or of an unknown format version, DatasetDamaged if it does not match its manifest.

    `verify`: "sizes" (default, one listing: files present with their recorded sizes),
    "full" (also shapes, row accounting and sha256, hashes cached; the training driver),
    "none"."""
    return PreparedDataset(location, verify=verify)
