"""Generic interactions (CSV/TSV or Parquet) with a column mapping, plus item-feature files.

Feature files are `.npy` (row r = item with integer id r; every item id must then be an
integer in range, and the file has exactly one row per id 0..max: extra rows would be
items nobody interacted with) or Parquet keyed by item id (one list<float> column, or
every numeric column other than the key, in file order). Timestamps are numbers (e.g.
Unix seconds), Parquet timestamps/dates, or ISO-8601 text. Text files are UTF-8 unless
`encoding` says otherwise (`jobs/prepare.py --encoding latin-1`).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline.errors import DataError
from data_pipeline.features import FeatureSource, keyed_feature, npy_feature
from data_pipeline.source import Source, index_ids, numeric_column, read_delimited, require_columns, string_column

SPLIT_LABELS = {"0": 0, "1": 1, "2": 2, "train": 0, "valid": 1, "validation": 1, "val": 1, "test": 2}


@dataclass(frozen=True)
class ColumnMap:
    """Input column names. Optional columns left at their default are used only when present."""

    user: str = "user_id"
    item: str = "item_id"
    rating: str | None = "rating"
    timestamp: str | None = "timestamp"
    split: str | None = None
    """A train/valid/test (or 0/1/2) column: the source split, kept by the protocol."""


@dataclass(frozen=True)
class FeatureFile:
    """One modality file: `.npy` (row = integer item id) or Parquet keyed by `key` column."""

    modality: str
    path: Path
    key: str = "item_id"


def read_table(path: Path, encoding: str = "utf-8") -> tuple[pa.Table, int]:
    """(table, line offset for messages: 0 = Parquet, rows are named by index) from .parquet,
    .csv or .tsv/.txt (text in `encoding`)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            return pq.read_table(path), 0
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if suffix in (".csv", ".tsv", ".txt"):
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataError(f"--encoding {encoding!r}: unknown text encoding; use e.g. utf-8, latin-1 or cp1252") \
                from None
        return read_delimited(path, "," if suffix == ".csv" else "\t", encoding=encoding), 2
    raise DataError(f"{path}: unknown table type {suffix!r}; use .csv, .tsv or .parquet")


def optional_column(path: Path, names: list[str], name: str | None, default: str | None, flag: str) -> str | None:
    """The column to use, None when absent and not asked for, DataError when asked for and absent."""
    if name is None or name in names:
        return name
    if name == default:
        return None
    raise DataError(f"{path}: no column {name!r} (from {flag}); found {names}")


def read_tabular(path: str | Path, columns: ColumnMap = ColumnMap(), features: tuple[FeatureFile, ...] = (),
                 name: str | None = None, encoding: str = "utf-8") -> Source:
    """Parse a CSV/Parquet interaction table (text in `encoding`) and its item features."""
    path = Path(path)
    table, off = read_table(path, encoding)
    names = table.column_names
    require_columns(path, names, [columns.user, columns.item],
                    "Map them with --col-user / --col-item.")
    defaults = ColumnMap()
    rating_col = optional_column(path, names, columns.rating, defaults.rating, "--col-rating")
    ts_col = optional_column(path, names, columns.timestamp, defaults.timestamp, "--col-timestamp")
    split_col = optional_column(path, names, columns.split, None, "--col-split")
    check_column_types(path, table.schema, {columns.user: "id", columns.item: "id", rating_col: "number",
                                     ts_col: "timestamp", split_col: "split"})
    users = string_column(path, columns.user, integral_ids(path, columns.user, table.column(columns.user)), off)
    items_raw = string_column(path, columns.item, integral_ids(path, columns.item, table.column(columns.item)), off)
    if users.size == 0:
        raise DataError(f"{path}: holds no interactions")
    rating = numeric_column(path, rating_col, table.column(rating_col), line_offset=off) if rating_col else None
    ts = timestamp_column(path, ts_col, table.column(ts_col), off) if ts_col else None
    split = split_labels(path, split_col, table.column(split_col), off) if split_col else None
    item_N, item_ids, feats = items_and_features(path, items_raw, features, off)
    return Source(name=name or path.stem, format="parquet" if off == 0 else "csv", user_raw=users, item_N=item_N,
                  item_ids=item_ids, rating=rating, timestamp=ts, split=split, features=feats,
                  files=[path] + [f.path for f in features])


# What a Parquet column may hold, by role: (predicate over its Arrow type, what to tell the user).
_TEXT = (pa.types.is_string, pa.types.is_large_string)
ACCEPTED_TYPES = {
    "id": ((*_TEXT, pa.types.is_integer, pa.types.is_floating), "text (string) or integer ids"),
    "number": ((*_TEXT, pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal), "numbers"),
    "timestamp": ((*_TEXT, pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_timestamp,
                   pa.types.is_date), "Unix seconds, a Parquet timestamp or date, or ISO-8601 text"),
    "split": ((*_TEXT, pa.types.is_integer), "train/valid/test text or 0/1/2 integers"),
}


IdColumn = TypeVar("IdColumn", pa.Array, pa.ChunkedArray)


def check_column_types(path: Path, schema: pa.Schema, roles: dict[str | None, str]) -> None:
    """DataError naming the first used column whose Arrow type cannot hold its role (a list,
    binary, boolean, struct, ...), and the type expected; dictionary columns count as their values."""
    for column, role in roles.items():
        if column is None:
            continue
        found = schema.field(column).type
        values = found.value_type if pa.types.is_dictionary(found) else found
        accepted, expected = ACCEPTED_TYPES[role]
        if not any(ok(values) for ok in accepted):
            raise DataError(f"{path}: column {column!r} holds {found}; expected {expected}")


def integral_ids(path: Path, column: str, col: IdColumn, first_row: int = 0) -> IdColumn:
    """Float ids (as pandas writes integer ids next to a missing value) as integers; DataError at
    the first that is not a whole number (0.5 would otherwise become one more user or item).
    `first_row`: the Parquet row of `col[0]`, for the message."""
    if not pa.types.is_floating(col.type) or col.null_count:
        return col  # nulls: `string_column` names the empty id
    values = col.to_numpy()
    bad = ~np.isfinite(values) | (values != np.floor(values))
    if bad.any():
        row = first_row + int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column {column!r}, row {row}: id {float(values[row - first_row])!r} is not a "
                        "whole number; expected text (string) or integer ids")
    ints = pa.array(values.astype(np.int64))
    return pa.chunked_array([ints]) if isinstance(col, pa.ChunkedArray) else ints


TIMESTAMP_FORMATS = "Unix seconds (e.g. 1709296200) or ISO-8601 (e.g. 2024-03-01T12:30:00Z, 2024-03-01)"


def timestamp_column(path: Path, column: str, col: pa.ChunkedArray, off: int) -> np.ndarray:
    """[N] float64 seconds since 1970 (UTC) from numbers, Parquet timestamps/dates or ISO-8601
    text (a zone offset is honoured, none means UTC); DataError at the first row that is none."""
    arr = col.combine_chunks()
    if pa.types.is_timestamp(arr.type):
        per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[arr.type.unit]
        arr = pc.divide(pc.cast(pc.cast(arr, pa.int64()), pa.float64()), per_second)
    elif pa.types.is_date(arr.type):
        arr = pc.cast(pc.cast(arr, pa.timestamp("s")), pa.int64())
    elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return _text_timestamps(path, column, arr, off)
    return numeric_column(path, column, arr, line_offset=off)


def _text_timestamps(path: Path, column: str, arr: pa.Array, off: int) -> np.ndarray:
    """Numbers or ISO-8601 date-times, whichever the first row holds, in every row."""
    import pandas as pd

    text = pd.Series(pc.utf8_trim_whitespace(arr.fill_null("")).to_numpy(zero_copy_only=False), dtype=object)
    if text.empty:
        return np.empty(0, np.float64)
    empty = (text == "").to_numpy()
    if empty.any():
        raise DataError(f"{path}: column {column!r}, {where_row(int(np.flatnonzero(empty)[0]), off)}: empty timestamp; "
                        "fill it in or remove that row")
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
    if not np.isnan(numbers[0]):
        bad = np.isnan(numbers)
        kind = "a number"
    else:
        when = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        bad = when.isna().to_numpy()
        kind = "an ISO-8601 date-time"
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column {column!r}, {where_row(row, off)}: timestamp {text[row]!r} is not {kind} "
                        f"like the first row's {text[0]!r}; write every timestamp as {TIMESTAMP_FORMATS}")
    if kind == "a number":
        return numeric_column(path, column, pa.array(numbers), line_offset=off)
    return (when - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)


def where_row(row: int, off: int) -> str:
    """0-based data row as the user sees it: a line of a text file (off = header lines + 1), or a Parquet row."""
    return f"line {row + off}" if off else f"row {row}"


def split_labels(path: Path, column: str, col: pa.ChunkedArray, off: int) -> np.ndarray:
    """Split labels as int8 0/1/2; DataError at the first unknown label."""
    labels = np.char.lower(string_column(path, column, col, off))
    uniq, inv = np.unique(labels, return_inverse=True)
    unknown = [str(u) for u in uniq if u not in SPLIT_LABELS]
    if unknown:
        row = int(np.flatnonzero(labels == unknown[0])[0])
        raise DataError(f"{path}: column {column!r}, line {row + off}: split label {unknown[0]!r} is not "
                        "train/valid/test or 0/1/2; fix it or drop --col-split")
    return np.array([SPLIT_LABELS[u] for u in uniq], np.int8)[inv]


def items_and_features(path: Path, items_raw: np.ndarray, files: tuple[FeatureFile, ...],
                       off: int) -> tuple[np.ndarray, np.ndarray, dict[str, FeatureSource]]:
    """(item index per row, item ids, features): .npy rows fix the universe, else the ids do."""
    npys = [f for f in files if f.path.suffix.lower() == ".npy"]
    feats: dict[str, FeatureSource] = {}
    if npys:
        item_N = numeric_column(path, "item id", pa.array(items_raw), integer=True, nonnegative=True, line_offset=off)
        n_items = int(item_N.max()) + 1
        for f in npys:
            check_npy_rows(path, item_N, npy_feature(f.modality, f.path), off)
        item_ids = np.arange(n_items).astype(str)
    else:
        item_N, item_ids = index_ids(items_raw)
    for f in files:
        if f.modality in feats:
            raise DataError(f"{f.path}: modality {f.modality!r} given twice; name each feature file once")
        feats[f.modality] = load_feature(f, item_ids)
    return item_N, item_ids, feats


def check_npy_rows(path: Path, item_N: np.ndarray, feat: FeatureSource, off: int) -> None:
    """An .npy feature file has one row per item id 0..max(id): fewer leaves ids without
    features, more would silently create items nobody interacted with."""
    n_items = int(item_N.max()) + 1
    if feat.n_rows < n_items:
        row = int(np.argmax(item_N))
        raise DataError(f"{path}: {where_row(row, off)}: item id {item_N[row]} has no row in {feat.path} "
                        f"({feat.n_rows} rows); .npy features need one row per item id 0..n-1")
    if feat.n_rows > n_items:
        raise DataError(f"{feat.path}: {feat.n_rows} feature rows, but the item ids in {path.name} stop at "
                        f"{n_items - 1}: rows {n_items}..{feat.n_rows - 1} would become items nobody interacted with; "
                        f"keep the first {n_items} rows (np.save(path, features[:{n_items}])) or key the features "
                        "by item id in a Parquet file")


def load_feature(f: FeatureFile, item_ids: np.ndarray) -> FeatureSource:
    """One feature file aligned to `item_ids`."""
    if f.path.suffix.lower() == ".npy":
        feat = npy_feature(f.modality, f.path)
        if feat.n_rows != item_ids.size:
            raise DataError(f"{f.path}: {feat.n_rows} feature rows but {item_ids.size} items; "
                            "every .npy feature file needs one row per item")
        return feat
    table, off = read_table(f.path)
    require_columns(f.path, table.column_names, [f.key], "Name the item-id column with name=path:key.")
    keys = string_column(f.path, f.key, table.column(f.key), off)
    return keyed_feature(f.modality, f.path, keys, feature_rows(f.path, table, f.key, keys, off), item_ids,
                         key_column=f.key)


def feature_rows(path: Path, table: pa.Table, key: str, keys: np.ndarray | None = None, off: int = 0) -> np.ndarray:
    """[K, D] float32 from one list column or all numeric non-key columns; errors name the
    file's row and its key."""
    others = [c for c in table.column_names if c != key]
    lists = [c for c in others if pa.types.is_list(table.schema.field(c).type)
             or pa.types.is_fixed_size_list(table.schema.field(c).type)]
    if len(lists) == 1:
        col = table.column(lists[0]).combine_chunks()
        lengths = pc.list_value_length(col).fill_null(-1).to_numpy(zero_copy_only=False)
        odd = (lengths != lengths[0]) | (lengths < 0) if lengths.size else lengths.astype(bool)
        if odd.any():
            row = int(np.flatnonzero(odd)[0]) if lengths[0] >= 0 else 0
            at = f"{where_row(row, off)}" + (f" ({key} {str(keys[row])!r})" if keys is not None else "")
            found = ("no feature vector (null)" if lengths[row] < 0
                     else f"{int(lengths[row])} values, but {where_row(0, off)} has {int(lengths[0])}")
            raise DataError(f"{path}: column {lists[0]!r}, {at}: {found}; every item needs a vector of the "
                            "same length")
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
        return flat.reshape(len(col), int(lengths[0]) if lengths.size else 0)
    numeric = [c for c in others if pa.types.is_integer(table.schema.field(c).type)
               or pa.types.is_floating(table.schema.field(c).type)]
    if not numeric or len(numeric) != len(others):
        raise DataError(f"{path}: expected the key column {key!r} and either one list<float> column or only "
                        f"numeric columns; found {table.schema}")
    return np.column_stack([table.column(c).to_numpy().astype(np.float32) for c in numeric])
