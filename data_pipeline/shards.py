"""Parquet shards of user rows: `user: int32`, `items: list<int32>`, sorted by user, items ascending.

Writing is deterministic (fixed schema, no pandas metadata, fixed compression), so the same
rows give byte-identical files. Reading back to CSR is vectorised with list_flatten /
list_parent_indices.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from data_pipeline import storage
from data_pipeline.storage import file_sha256

SCHEMA = pa.schema([("user", pa.int32()), ("items", pa.list_(pa.int32()))])
DEFAULT_ROWS_PER_SHARD = 8192


def user_rows(users: np.ndarray, items: np.ndarray) -> pa.Table:
    """One row per user from (user, item) pairs already sorted by (user, item)."""
    uniq, start = np.unique(users, return_index=True)
    offsets = np.append(start, users.size).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(items.astype(np.int32), pa.int32()))
    return pa.Table.from_arrays([pa.array(uniq.astype(np.int32), pa.int32()), lists], schema=SCHEMA)


def write_shards(table: pa.Table, folder: Path, rows_per_shard: int) -> list[dict[str, Any]]:
    """`part-00000.parquet …` in `folder`; returns [{file, rows, sha256}] in order."""
    writer = ShardWriter(folder, rows_per_shard)
    writer.add(table)
    return writer.close()


class ShardWriter:
    """Writes user rows, given in user order piece by piece, as shards of `rows_per_shard` rows.

    At most `rows_per_shard` rows wait in memory beyond the piece being added; the shards are
    the same bytes as cutting the whole table at once (each is written from one contiguous
    chunk). An empty split still gets one (empty) shard, so its schema is on disk."""

    def __init__(self, folder: Path, rows_per_shard: int) -> None:
        self.folder, self.rows_per_shard = folder, rows_per_shard
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.written: list[dict[str, Any]] = []
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, rows: pa.Table) -> None:
        self.pending.append(rows)
        self.pending_rows += rows.num_rows
        while self.pending_rows >= self.rows_per_shard:
            self._write(self.rows_per_shard)

    def close(self) -> list[dict[str, Any]]:
        """Write what is left; [{file, rows, sha256}] of every shard, in order."""
        if self.pending_rows or not self.written:
            self._write(self.pending_rows)
        return self.written

    def _write(self, n: int) -> None:
        table = pa.concat_tables(self.pending).combine_chunks() if self.pending else SCHEMA.empty_table()
        path = self.folder / f"part-{len(self.written):05d}.parquet"
        pq.write_table(table.slice(0, n), path, compression="zstd", write_statistics=True)
        self.written.append({"file": f"{self.folder.name}/{path.name}", "rows": n, "sha256": file_sha256(path)})
        self.pending = [table.slice(n)]
        self.pending_rows -= n


def read_pairs(files: list[str], user_range: tuple[int, int] | None = None,
               check: Callable[[str, bytes], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(user [n] int64, item [n] int64) of every (user, item) in the shards; with
    `user_range=(lo, hi)` only those of users lo ≤ u < hi: a shard whose footer statistics
    put all its users outside the range is not read, and row groups are filtered likewise.
    Each shard read is read whole into memory and handed to `check(file, bytes)` before it
    is parsed (the dataset compares its sha256 with the manifest's)."""
    filters = None if user_range is None else [("user", ">=", user_range[0]), ("user", "<", user_range[1])]
    tables = []
    for f in files:
        if user_range is not None and not _may_hold_users(f, user_range):
            continue
        data = storage.read_bytes(f)
        if check is not None:
            check(f, data)
        tables.append(pq.read_table(pa.BufferReader(data), schema=SCHEMA, filters=filters))
    if not tables:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    table = pa.concat_tables(tables)
    lists = table.column("items").combine_chunks()
    parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    users = table.column("user").to_numpy().astype(np.int64)[parent]
    return users, pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)


def _may_hold_users(file: str, user_range: tuple[int, int]) -> bool:
    """False only when the shard's footer statistics put every user outside [lo, hi)."""
    fs, path = storage.filesystem(file)
    try:
        with fs.open_input_file(path) as fh:
            meta = pq.ParquetFile(fh).metadata
    except (OSError, pa.ArrowException):
        return True  # an unreadable footer: read it whole, so that `check` names the damage
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(0).statistics
        if stats is None or not stats.has_min_max or (stats.max >= user_range[0] and stats.min < user_range[1]):
            return True
    return False


def pairs_to_csr(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary float32 CSR [n_users, n_items]."""
    m = sp.csr_matrix((np.ones(users.size, np.float32), (users, items)), shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m

