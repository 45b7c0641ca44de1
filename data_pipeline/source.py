"""What every reader returns: one interaction table with original ids, plus item features.

Readers parse their format into a `Source`; the protocol (`protocol.py`) and the writer
(`prepare.py`) never see a file format. Helpers here turn text columns into numbers with
errors that name the file, the column and the first bad line.

Shapes: N input rows, I items (the item universe, index = feature row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from data_pipeline.errors import DataError
from data_pipeline.features import FeatureSource

SPLIT_NAMES = ("train", "valid", "test")


@dataclass
class Source:
    """An interaction table in input row order, item ids already mapped to the item universe."""

    name: str
    format: str
    user_raw: np.ndarray
    """[N] original user id per row (int64 or str)."""
    item_N: np.ndarray
    """[N] int64 item index per row, into `item_ids`."""
    item_ids: np.ndarray
    """[I] str: item index -> original id."""
    rating: np.ndarray | None = None
    """[N] float64, or None when the source has no ratings."""
    timestamp: np.ndarray | None = None
    """[N] float64, or None (chronology then follows input row order)."""
    split: np.ndarray | None = None
    """[N] int8 in {0, 1, 2} = train/valid/test when the source carries a split."""
    features: dict[str, FeatureSource] = field(default_factory=dict)
    """Modality name -> feature rows, in modality order; row r belongs to item index r."""
    files: list[Path] = field(default_factory=list)
    """Every input file read (recorded in the manifest with its sha256)."""
    item_table: Path | None = None
    """A table describing the items (RecBole `.item`, CSV, Parquet) whose fields become
    modalities (`item_fields`); None: the source has none."""

    @property
    def n_rows(self) -> int:
        return int(self.item_N.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])


def read_delimited(path: Path, delimiter: str, quote: bool = True, encoding: str = "utf-8") -> pa.Table:
    """A text table with a header line, every column read as a (non-null) string."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding=encoding, errors="replace") as fh:
        header = fh.readline().rstrip("\r\n")
    if not header:
        raise DataError(f"{path}: the file is empty; it needs a header line naming its columns")
    names = header.split(delimiter)
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, encoding=encoding),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quote else False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        from data_pipeline.text_encoding import encoding_error  # names the line a wrong encoding breaks

        raise encoding_error(path, encoding) or DataError(
            f"{path}: cannot parse as a {delimiter!r}-separated table with columns {names}: "
            f"{str(err).splitlines()[0]}; fix the malformed line") from None


def require_columns(path: Path, found: list[str], needed: list[str], hint: str = "") -> None:
    """DataError naming the missing columns and the ones present."""
    missing = [c for c in needed if c not in found]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {found}. {hint}".strip())


def _first_bad(path: Path, column: str, bad: np.ndarray, values: Any, what: str, line_offset: int) -> DataError:
    row = int(np.flatnonzero(bad)[0])
    return DataError(f"{path}: column {column!r}, line {row + line_offset}: {what} "
                     f"(value {str(values[row])!r}); fix or remove that row")


def numeric_column(path: Path, column: str, arr: pa.Array | pa.ChunkedArray, *, integer: bool = False,
                   nonnegative: bool = False, line_offset: int = 2) -> np.ndarray:
    """A column of numbers as float64 (or int64 when `integer`), with a DataError at the first bad row.

    `line_offset` converts a 0-based row into the line number a user sees (2 = after a header).
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.utf8_trim_whitespace(arr)
    try:
        values = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import pandas as pd

        coerced = pd.to_numeric(pd.Series(arr.to_numpy(zero_copy_only=False)), errors="coerce").to_numpy(float)
        raise _first_bad(path, column, np.isnan(coerced) | ~np.isfinite(coerced),
                         arr.to_numpy(zero_copy_only=False), "not a number", line_offset) from None
    if arr.null_count:
        raise _first_bad(path, column, np.isnan(values), arr.to_pylist(), "empty value", line_offset)
    bad = ~np.isfinite(values)
    if bad.any():
        raise _first_bad(path, column, bad, values, "not a finite number", line_offset)
    if integer:
        bad = values != np.floor(values)
        if bad.any():
            raise _first_bad(path, column, bad, values, "ids must be integers", line_offset)
    if nonnegative:
        bad = values < 0
        if bad.any():
            raise _first_bad(path, column, bad, values, "ids must be non-negative", line_offset)
    return values.astype(np.int64) if integer else values


def string_column(path: Path, column: str, arr: pa.Array | pa.ChunkedArray, line_offset: int = 2) -> np.ndarray:
    """A column of ids as a numpy str array; empty ids are an error."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))
    bad = pc.or_kleene(pc.is_null(arr), pc.equal(pc.utf8_length(arr), 0)).fill_null(True).to_numpy(zero_copy_only=False)
    if bad.any():
        raise _first_bad(path, column, bad, arr.to_pylist(), "empty id", line_offset)
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=str)


def index_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes [N] int64, uniques [U] str): dense indices in numeric order when every id is an
    integer, else in string order."""
    if raw.dtype.kind in "iu":
        uniques, codes = np.unique(raw, return_inverse=True)
        return codes.astype(np.int64), uniques.astype(str)
    uniques, codes = np.unique(raw, return_inverse=True)
    as_int = _as_integers(uniques)
    if as_int is not None:
        order = np.argsort(as_int, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        return rank[codes].astype(np.int64), uniques[order]
    return codes.astype(np.int64), uniques


def _as_integers(uniques: np.ndarray) -> np.ndarray | None:
    """The ids as int64 when every one is a canonical integer string, else None."""
    try:
        ints = uniques.astype(np.int64)
    except (ValueError, OverflowError):
        return None
    return ints if np.array_equal(ints.astype(str), uniques) else None
