"""RecBole atomic files: `<name>.inter` with typed headers (`user_id:token item_id:token
rating:float timestamp:float`), optional `<name>.item` whose `float_seq` columns become
modalities (named after the field), plus any extra keyed feature files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline.errors import DataError
from data_pipeline.features import keyed_feature
from data_pipeline.readers.mmrec import find_inter
from data_pipeline.readers.tabular import FeatureFile, load_feature
from data_pipeline.source import Source, index_ids, numeric_column, read_delimited, require_columns, string_column

TYPES = ("token", "token_seq", "float", "float_seq")


def typed_table(path: Path) -> tuple[pa.Table, dict[str, str]]:
    """The file with columns renamed to their field names, and field -> RecBole type."""
    table = read_delimited(path, "\t", quote=False)
    fields, types = [], {}
    for header in table.column_names:
        field, sep, kind = header.partition(":")
        if not sep or kind not in TYPES:
            raise DataError(f"{path}: header {header!r} is not field:type with type in {TYPES}; "
                            "RecBole atomic files need typed headers like user_id:token")
        fields.append(field)
        types[field] = kind
    return table.rename_columns(fields), types


def read_recbole(path: str | Path, name: str | None = None, user_field: str = "user_id",
                 item_field: str = "item_id", features: tuple[FeatureFile, ...] = ()) -> Source:
    """Parse `<name>.inter` (and `<name>.item` when present)."""
    inter = find_inter(Path(path), name)
    table, types = typed_table(inter)
    require_columns(inter, table.column_names, [user_field, item_field],
                    "Name them with --col-user / --col-item.")
    users = string_column(inter, user_field, table.column(user_field))
    items_raw = string_column(inter, item_field, table.column(item_field))
    if users.size == 0:
        raise DataError(f"{inter}: holds no interactions")
    rating = numeric_column(inter, "rating", table.column("rating")) if "rating" in types else None
    ts = numeric_column(inter, "timestamp", table.column("timestamp")) if "timestamp" in types else None
    item_N, item_ids = index_ids(items_raw)
    item_file = inter.with_suffix(".item")
    feats = item_features(item_file, item_field, item_ids) if item_file.is_file() else {}
    for f in features:
        if f.modality in feats:
            raise DataError(f"{f.path}: modality {f.modality!r} is already in {item_file.name}; rename it")
        feats[f.modality] = load_feature(f, item_ids)
    files = [inter] + ([item_file] if item_file.is_file() else []) + [f.path for f in features]
    return Source(name=inter.stem, format="recbole", user_raw=users, item_N=item_N, item_ids=item_ids,
                  rating=rating, timestamp=ts, features=feats, files=files)


def item_features(path: Path, item_field: str, item_ids: np.ndarray) -> dict[str, Any]:
    """Each `float_seq` column of the .item file as a modality aligned to `item_ids`."""
    table, types = typed_table(path)
    require_columns(path, table.column_names, [item_field])
    keys = string_column(path, item_field, table.column(item_field))
    feats = {}
    for field in [f for f, t in types.items() if t == "float_seq"]:
        col = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(table.column(field).combine_chunks()))
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if lengths.size and (lengths != lengths[0]).any():
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise DataError(f"{path}: column {field!r}, line {row + 2}: {lengths[row]} values where line 2 has "
                            f"{lengths[0]}; every feature vector needs the same width")
        flat = float_values(path, field, col)
        rows = flat.astype(np.float32).reshape(len(col), int(lengths[0]) if lengths.size else 0)
        feats[field] = keyed_feature(field, path, keys, rows, item_ids)
    return feats


def float_values(path: Path, field: str, lists: pa.ListArray) -> np.ndarray:
    """The flattened numbers of a split float_seq column; DataError naming the line of a bad value."""
    flat = pc.list_flatten(lists)
    try:
        return pc.cast(flat, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = flat.to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(pd.to_numeric(pd.Series(values), errors="coerce").isna().to_numpy())[0]
        row = int(pc.list_parent_indices(lists).to_numpy()[bad])
        raise DataError(f"{path}: column {field!r}, line {row + 2}: {str(values[bad])!r} is not a number; "
                        "float_seq values are space-separated numbers") from None
