"""A prepared dataset directory, read-only: what the trainer opens.

`open_dataset(location)` checks the manifest (format version, every listed file present)
and gives the splits as shard paths or binary CSR matrices, the item features, the train
item degrees and the id maps (index -> original id). The location is a local directory or
an object-store URI (s3://, gs://): shards are then read in place through pyarrow's
filesystems; item features, which the model memory-maps, are downloaded once per machine
into a cache keyed by the manifest's sha256.
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
from data_pipeline.errors import DataError
from data_pipeline.manifest import listed_files, read_manifest
from data_pipeline.shards import pairs_to_csr, read_pairs
from data_pipeline.source import SPLIT_NAMES


# Where item features of datasets on object storage are cached for memory-mapping.
FEATURE_CACHE = os.environ.get("LD4MREC_CACHE", str(Path("~/.cache/ld4mrec/features").expanduser()))


class PreparedDataset:
    """One prepared dataset: users 0..n_users-1, items 0..n_items-1."""

    def __init__(self, location: str | Path):
        self.location = storage.normalize(location)
        self.name = storage.name_of(self.location)
        # A Path for a local directory; the URI string itself for an object store.
        self.path = self.location if storage.is_uri(self.location) else Path(self.location)
        self.manifest, raw = read_manifest(self.location)
        self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
        missing = [f for f in listed_files(self.manifest) if not storage.is_file(self._file(f))]
        if missing:
            raise DataError(f"{self.path}: incomplete dataset, {len(missing)} listed file(s) missing "
                            f"(e.g. {missing[0]}); prepare it again with --overwrite")
        self.n_users = int(self.manifest["n_users"])
        self.n_items = int(self.manifest["n_items"])
        self.modalities = [m["name"] for m in self.manifest["modalities"]]

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.path)!r}, users={self.n_users}, items={self.n_items}, modalities={self.modalities})"

    def feature(self, name: str) -> np.ndarray:
        """float32 [n_items, d_m], memory-mapped."""
        if name not in self.modalities:
            raise DataError(f"{self.path}: no modality {name!r}; it has {self.modalities}")
        local = storage.local_copy(self._file(f"features/{name}.npy"), FEATURE_CACHE, self.manifest_sha256)
        return np.load(local, mmap_mode="r")

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
        return pairs_to_csr(users, items, self.n_users, self.n_items)

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

    def _check_split(self, split: str) -> None:
        if split not in SPLIT_NAMES:
            raise DataError(f"split {split!r}: choose one of {SPLIT_NAMES}")


def open_dataset(location: str | Path) -> PreparedDataset:
    """Open a prepared dataset (local directory or s3://, gs://, file:// URI); DataError if
    missing, incomplete or of an unknown format version."""
    return PreparedDataset(location)
