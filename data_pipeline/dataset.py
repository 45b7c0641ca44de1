"""A prepared dataset directory, read-only: what the trainer opens.

`open_dataset(location, verify=...)` checks the manifest (format version; then, by default,
every listed file present with its recorded size; `verify="full"` also shapes, row
accounting and sha256, see `verify.py`) and gives the splits as shard paths or binary CSR
matrices, the item features, the train item degrees and the id maps (index -> original
id). The location is a local directory or an object-store URI (s3://, gs://): shards are
then read in place through pyarrow's filesystems; item features, which the model
memory-maps, are downloaded once per machine into a cache keyed by the manifest's sha256.
"""

from __future__ import annotations

import hashlib
import io
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from data_pipeline import storage
from data_pipeline.errors import DataError, DatasetDamaged
from data_pipeline.manifest import read_manifest
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
        local = storage.local_copy(self._file(f"features/{name}.npy"), FEATURE_CACHE, self.manifest_sha256)
        rows_ID = np.load(local, mmap_mode="r")
        dim = next(int(m["dim"]) for m in self.manifest["modalities"] if m["name"] == name)
        if rows_ID.shape != (self.n_items, dim):
            raise self._damaged(f"features/{name}.npy holds {list(rows_ID.shape)}, the manifest declares "
                                f"[n_items={self.n_items}, dim={dim}]")
        return rows_ID

    @cached_property
    def item_degree(self) -> np.ndarray:
        """int64 [n_items]: train-split degree of each item."""
        return np.load(io.BytesIO(storage.read_bytes(self._file("item_degree.npy"))))

    def split_files(self, split: str) -> list[str]:
        """Sorted absolute paths of the split's Parquet shards."""
        self._check_split(split)
        return sorted(self._file(entry["file"]) for entry in self.manifest["files"]["splits"][split])

    def split_csr(self, split: str) -> sp.csr_matrix:
        """Binary float32 CSR [n_users, n_items] of the split."""
        users, items = read_pairs(self.split_files(split))
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
        users_in, items = read_pairs(files, user_range=(lo, hi))
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
        return np.intersect1d(self._users_in(split), self._users_in("train")).astype(np.int64)

    def _users_in(self, split: str) -> np.ndarray:
        files = self.split_files(split)
        if not files:
            return np.empty(0, np.int64)
        fs, _ = storage.filesystem(files[0])
        paths = [storage.filesystem(f)[1] for f in files]
        return pq.read_table(paths, columns=["user"], filesystem=fs).column("user").to_numpy().astype(np.int64)

    def _ids(self, kind: str) -> np.ndarray:
        fs, path = storage.filesystem(self._file(f"id_maps/{kind}.parquet"))
        table = pq.read_table(path, filesystem=fs)
        ids = np.empty(table.num_rows, dtype=object)
        ids[table.column("index").to_numpy()] = table.column("id").to_pylist()
        return ids.astype(str)

    def _file(self, relative: str) -> str:
        """The location of a file of the dataset (`relative` uses forward slashes)."""
        return storage.join(self.location, *relative.split("/"))

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
