"""Item feature matrices: read lazily, validated and written in row chunks (bounded memory).

A `FeatureSource` is one modality's rows [I, D] in item-index order: either an .npy file
read in chunks (row r = item r) or an in-memory array gathered by item (keyed Parquet).
`write_features` streams it to a float32 .npy, refusing NaN/inf with the file and row as
the user knows them (for a keyed file: its own row and key, not our item index).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.errors import DataError

CHUNK_BYTES = 64 << 20


@dataclass
class FeatureSource:
    """One modality: `path` (.npy, streamed) or `array` (in memory), rows in item order."""

    name: str
    path: Path
    n_rows: int
    width: int
    array: np.ndarray | None = None
    """In-memory rows [I, D] already in item order (keyed sources); None: stream `path`."""
    header: tuple[int, np.dtype, bool] | None = None
    """(data offset, dtype, fortran_order) of the .npy at `path`."""
    file_rows: np.ndarray | None = None
    """[I] the row of `path` each item's features came from (keyed sources); None: row = item index."""
    keys: np.ndarray | None = None
    """[I] the key (original item id) of each row, named `key_column` in `path` (keyed sources)."""
    key_column: str = "item_id"

    def describe_row(self, row: int) -> str:
        """Item-order row `row` as the user finds it in `path`: its file row, and its key if keyed."""
        if self.file_rows is None or self.keys is None:
            return f"row {row}"
        return f"row {int(self.file_rows[row])} ({self.key_column} {str(self.keys[row])!r})"

    def chunks(self, rows_per_chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 block [C, D]) over all rows, each block checked for NaN/inf."""
        for start in range(0, self.n_rows, rows_per_chunk):
            stop = min(start + rows_per_chunk, self.n_rows)
            block = np.ascontiguousarray(self._block(start, stop), dtype=np.float32)
            bad = ~np.isfinite(block)
            if bad.any():
                row = start + int(np.flatnonzero(bad.any(axis=1))[0])
                raise DataError(f"{self.path}: feature {self.describe_row(row)} of modality {self.name!r} holds "
                                "NaN or inf (or an empty value); replace it with finite values (e.g. zeros)")
            yield start, block

    def _block(self, start: int, stop: int) -> np.ndarray:
        if self.array is not None:
            return self.array[start:stop]
        assert self.header is not None, "an .npy source carries its header"
        offset, dtype, fortran = self.header
        if fortran:
            return np.load(self.path, mmap_mode="r")[start:stop]
        with open(self.path, "rb") as fh:
            fh.seek(offset + start * self.width * dtype.itemsize)
            flat = np.fromfile(fh, dtype=dtype, count=(stop - start) * self.width)
        return flat.reshape(stop - start, self.width)


def npy_feature(name: str, path: Path) -> FeatureSource:
    """A streamed .npy feature matrix; DataError when it is not a 2-D numeric array."""
    if not path.is_file():
        raise DataError(f"{path}: feature file for modality {name!r} not found")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a valid .npy file ({err}); save it with numpy.save") from None
    if len(shape) != 2 or dtype.kind not in "fiu" or dtype.hasobject:
        raise DataError(f"{path}: expected a 2-D numeric array [items, width], got shape {shape} "
                        f"dtype {dtype}; save one row per item")
    return FeatureSource(name, path, int(shape[0]), int(shape[1]), header=(offset, dtype, fortran))


def array_feature(name: str, path: Path, rows: np.ndarray, file_rows: np.ndarray | None = None,
                  keys: np.ndarray | None = None, key_column: str = "item_id") -> FeatureSource:
    """An in-memory feature matrix [I, D] (already ordered by item index); `file_rows`/`keys`
    [I]: where each row came from in `path`, for messages."""
    return FeatureSource(name, path, int(rows.shape[0]), int(rows.shape[1]), array=rows, file_rows=file_rows,
                         keys=keys, key_column=key_column)


def write_features(src: FeatureSource, out: Path, progress: Any = None) -> str:
    """Stream `src` to `out` as float32 .npy; returns the file's sha256."""
    rows_per_chunk = max(1, CHUNK_BYTES // max(1, 4 * src.width))
    digest = hashlib.sha256()
    header = {"descr": "<f4", "fortran_order": False, "shape": (src.n_rows, src.width)}
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, header)
    with open(out, "wb") as fh:
        for piece in _pieces(head.getvalue(), src, rows_per_chunk, progress):
            fh.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def _pieces(head: bytes, src: FeatureSource, rows_per_chunk: int, progress: Any) -> Iterator[bytes]:
    yield head
    for _, block in src.chunks(rows_per_chunk):
        yield block.astype("<f4", copy=False).tobytes()
        if progress is not None:
            progress.update(block.shape[0])


def keyed_feature(name: str, path: Path, keys: np.ndarray, rows: np.ndarray, item_ids: np.ndarray,
                  key_column: str = "item_id") -> FeatureSource:
    """Rows [K, D] keyed by original item id `keys` [K] (str, column `key_column`), reordered to `item_ids` [I]."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    dup = sorted_keys[1:] == sorted_keys[:-1]
    if dup.any():
        key = sorted_keys[1:][dup][0]
        rows_of_key = np.flatnonzero(keys == key)[:2]
        raise DataError(f"{path}: {key_column} {str(key)!r} has more than one feature row (rows {rows_of_key[0]} "
                        f"and {rows_of_key[1]}); keep one")
    pos = np.searchsorted(sorted_keys, item_ids)
    pos_clipped = np.minimum(pos, max(sorted_keys.size - 1, 0))
    missing = (pos >= sorted_keys.size) | (sorted_keys[pos_clipped] != item_ids) if sorted_keys.size else \
        np.ones(item_ids.size, bool)
    if missing.any():
        raise DataError(f"{path}: no {name!r} features for {int(missing.sum())} item(s) of the interactions, "
                        f"e.g. item id {str(item_ids[missing][0])!r}; add a row for every item")
    file_rows = order[pos]
    return array_feature(name, path, np.asarray(rows[file_rows], dtype=np.float32), file_rows=file_rows,
                         keys=item_ids, key_column=key_column)
