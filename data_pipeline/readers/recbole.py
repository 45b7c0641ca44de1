"""RecBole atomic files: `<name>.inter` with typed headers (`user_id:token item_id:token
rating:float timestamp:float`), an optional `<name>.item` (the item table: each of its fields
becomes a modality or is skipped, see `item_fields`), plus any extra keyed feature files.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from data_pipeline.errors import DataError
from data_pipeline.readers.mmrec import find_inter
from data_pipeline.readers.tabular import FeatureFile, load_feature, read_table
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


def read_any_table(path: Path, encoding: str = "utf-8") -> tuple[pa.Table, dict[str, str], int]:
    """(table with plain field names, field -> RecBole type (empty for untyped files), line offset
    for messages) from a RecBole atomic file (.item/.inter/.user, typed headers), .csv/.tsv or .parquet."""
    if path.suffix.lower() in (".item", ".inter", ".user"):
        table, types = typed_table(path)
        return table, types, 2
    table, off = read_table(path, encoding)
    return table, {}, off


def read_recbole(path: str | Path, name: str | None = None, user_field: str = "user_id",
                 item_field: str = "item_id", features: tuple[FeatureFile, ...] = ()) -> Source:
    """Parse `<name>.inter`; `<name>.item` beside it, when present, is the source's item table
    (its fields become modalities in `item_fields`)."""
    inter = find_inter(Path(path), name, source="RecBole")
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
    feats = {}
    for f in features:
        if f.modality in feats:
            raise DataError(f"{f.path}: modality {f.modality!r} given twice; name each feature file once")
        feats[f.modality] = load_feature(f, item_ids)
    return Source(name=inter.stem, format="recbole", user_raw=users, item_N=item_N, item_ids=item_ids,
                  rating=rating, timestamp=ts, features=feats, files=[inter] + [f.path for f in features],
                  item_table=item_file if item_file.is_file() else None)
