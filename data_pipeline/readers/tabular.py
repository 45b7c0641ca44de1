"""Generic interactions (CSV/TSV or Parquet) with a column mapping, plus item-feature files.

Feature files are `.npy` (row r = item with integer id r; every item id must then be an
integer in range) or Parquet keyed by item id (one list<float> column, or every numeric
column other than the key, in file order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline.errors import DataError
from data_pipeline.features import FeatureSource, keyed_feature, npy_feature
from data_pipeline.source import (Source, index_ids, numeric_column, read_delimited, require_columns,
                                  string_column)

SPLIT_LABELS = {"0": 0, "1": 1, "2": 2, "train": 0, "valid": 1, "validation": 1, "val": 1, "test": 2}


@dataclass(frozen=True)
class ColumnMap:
    """Input column names. Optional columns left at their default are used only when present."""

    user: str = "user_id"
    item: str = "item_id"
    rating: Optional[str] = "rating"
    timestamp: Optional[str] = "timestamp"
    split: Optional[str] = None
    """A train/valid/test (or 0/1/2) column: the source split, kept by the protocol."""


@dataclass(frozen=True)
class FeatureFile:
    """One modality file: `.npy` (row = integer item id) or Parquet keyed by `key` column."""

    modality: str
    path: Path
    key: str = "item_id"


def read_table(path: Path) -> tuple[pa.Table, int]:
    """(table, line offset for messages) from .parquet, .csv or .tsv/.txt."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            return pq.read_table(path), 0
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if suffix in (".csv", ".tsv", ".txt"):
        return read_delimited(path, "," if suffix == ".csv" else "\t"), 2
    raise DataError(f"{path}: unknown table type {suffix!r}; use .csv, .tsv or .parquet")


def optional_column(path: Path, names: list[str], name: Optional[str], default: Optional[str], flag: str):
    """The column to use, None when absent and not asked for, DataError when asked for and absent."""
    if name is None or name in names:
        return name
    if name == default:
        return None
    raise DataError(f"{path}: no column {name!r} (from {flag}); found {names}")


def read_tabular(path: str | Path, columns: ColumnMap = ColumnMap(), features: tuple[FeatureFile, ...] = (),
                 name: Optional[str] = None) -> Source:
    """Parse a CSV/Parquet interaction table and its item features."""
    path = Path(path)
    table, off = read_table(path)
    names = table.column_names
    require_columns(path, names, [columns.user, columns.item],
                    "Map them with --col-user / --col-item.")
    defaults = ColumnMap()
    rating_col = optional_column(path, names, columns.rating, defaults.rating, "--col-rating")
    ts_col = optional_column(path, names, columns.timestamp, defaults.timestamp, "--col-timestamp")
    split_col = optional_column(path, names, columns.split, None, "--col-split")
    users = string_column(path, columns.user, table.column(columns.user), off)
    items_raw = string_column(path, columns.item, table.column(columns.item), off)
    if users.size == 0:
        raise DataError(f"{path}: holds no interactions")
    rating = numeric_column(path, rating_col, _numeric(table.column(rating_col)), line_offset=off) if rating_col else None
    ts = numeric_column(path, ts_col, _numeric(table.column(ts_col)), line_offset=off) if ts_col else None
    split = split_labels(path, split_col, table.column(split_col), off) if split_col else None
    item_N, item_ids, feats = items_and_features(path, items_raw, features, off)
    return Source(name=name or path.stem, format="parquet" if off == 0 else "csv", user_raw=users, item_N=item_N,
                  item_ids=item_ids, rating=rating, timestamp=ts, split=split, features=feats,
                  files=[path] + [f.path for f in features])


def _numeric(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_temporal(col.type):
        return pc.cast(pc.cast(col, pa.timestamp("s")) if pa.types.is_timestamp(col.type) else col, pa.int64())
    return col


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


def items_and_features(path: Path, items_raw: np.ndarray, files: tuple[FeatureFile, ...], off: int):
    """(item index per row, item ids, features): .npy rows fix the universe, else the ids do."""
    npys = [f for f in files if f.path.suffix.lower() == ".npy"]
    feats: dict[str, FeatureSource] = {}
    if npys:
        first = npy_feature(npys[0].modality, npys[0].path)
        item_N = numeric_column(path, "item id", pa.array(items_raw), integer=True, nonnegative=True, line_offset=off)
        if item_N.max() >= first.n_rows:
            row = int(np.argmax(item_N))
            raise DataError(f"{path}: line {row + off}: item id {item_N[row]} has no row in {first.path} "
                            f"({first.n_rows} rows); .npy features need one row per item id 0..n-1")
        item_ids = np.arange(first.n_rows).astype(str)
    else:
        item_N, item_ids = index_ids(items_raw)
    for f in files:
        if f.modality in feats:
            raise DataError(f"{f.path}: modality {f.modality!r} given twice; name each feature file once")
        feats[f.modality] = load_feature(f, item_ids)
    return item_N, item_ids, feats


def load_feature(f: FeatureFile, item_ids: np.ndarray) -> FeatureSource:
    """One feature file aligned to `item_ids`."""
    if f.path.suffix.lower() == ".npy":
        feat = npy_feature(f.modality, f.path)
        if feat.n_rows != item_ids.size:
            raise DataError(f"{f.path}: {feat.n_rows} feature rows but {item_ids.size} items; "
                            "every .npy feature file needs one row per item")
        return feat
    table, _ = read_table(f.path)
    require_columns(f.path, table.column_names, [f.key], "Name the item-id column with name=path:key.")
    keys = string_column(f.path, f.key, table.column(f.key), 0)
    return keyed_feature(f.modality, f.path, keys, feature_rows(f.path, table, f.key), item_ids)


def feature_rows(path: Path, table: pa.Table, key: str) -> np.ndarray:
    """[K, D] float32 from one list column or all numeric non-key columns."""
    others = [c for c in table.column_names if c != key]
    lists = [c for c in others if pa.types.is_list(table.schema.field(c).type)
             or pa.types.is_fixed_size_list(table.schema.field(c).type)]
    if len(lists) == 1:
        col = table.column(lists[0]).combine_chunks()
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if lengths.size and (lengths != lengths[0]).any():
            raise DataError(f"{path}: column {lists[0]!r}: feature vectors have different lengths "
                            f"({int(lengths.min())}..{int(lengths.max())}); make them equal")
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
        return flat.reshape(len(col), int(lengths[0]) if lengths.size else 0)
    numeric = [c for c in others if pa.types.is_integer(table.schema.field(c).type)
               or pa.types.is_floating(table.schema.field(c).type)]
    if not numeric or len(numeric) != len(others):
        raise DataError(f"{path}: expected the key column {key!r} and either one list<float> column or only "
                        f"numeric columns; found {table.schema}")
    return np.column_stack([table.column(c).to_numpy().astype(np.float32) for c in numeric])
