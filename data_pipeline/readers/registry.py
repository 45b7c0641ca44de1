"""The table of readers: each source format, the options it takes and how it is read.

`jobs/prepare.py` builds its `--source` choices, its argument checks and its dispatch from
`READERS`; adding a format is one entry here (a `read` function from the parsed options to a
`Source`). The options are the command line's names (`path`, `col_user`, `feature`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_pipeline.errors import DataError
from data_pipeline.item_fields import ItemPlan
from data_pipeline.readers.movielens import ITEM_PLAN as MOVIELENS_ITEMS
from data_pipeline.source import Source

if TYPE_CHECKING:
    from data_pipeline.streaming import TabularLog


@dataclass(frozen=True)
class Reader:
    """One `--source`: how it is read and which options it takes."""

    name: str
    read: Callable[[Any], Source | TabularLog] | None
    """Parsed options -> Source (or a streamed TabularLog); None: the source is generated, not read (synthetic)."""
    needs_path: bool = True
    """--path is required (else optional: the reader finds or fetches its files)."""
    columns: bool = False
    """Takes --col-user/--col-item/--col-split (its files have no fixed column names)."""
    features: str = ""
    """Empty when --feature files are taken, else why they are refused."""
    item_plan: ItemPlan = ItemPlan()
    """Preset kinds for the fields of its item table."""


def feature_files(specs: list[str]) -> tuple[Any, ...]:
    """--feature MODALITY=PATH[:KEY] -> FeatureFile list."""
    from data_pipeline.readers.tabular import FeatureFile

    files = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise DataError(f"--feature {spec!r}: write MODALITY=PATH or MODALITY=PATH:KEY, e.g. text=text.parquet")
        path, _, key = rest.partition(":") if not Path(rest).exists() else (rest, "", "")
        files.append(FeatureFile(name, Path(path), key or "item_id"))
    return tuple(files)


def read_mmrec_source(opts: Any) -> Source:
    from data_pipeline.readers.mmrec import read_mmrec

    return read_mmrec(opts.path, opts.name)


def read_recbole_source(opts: Any) -> Source:
    from data_pipeline.readers.recbole import read_recbole

    return read_recbole(opts.path, opts.name, opts.col_user or "user_id", opts.col_item or "item_id",
                        feature_files(opts.feature))


def read_tabular_source(opts: Any) -> TabularLog:
    """Scanned, not loaded: prepare streams the log bucket by bucket (data_pipeline/streaming.py)."""
    from data_pipeline.readers.tabular import ColumnMap
    from data_pipeline.streaming import open_log

    columns = ColumnMap(opts.col_user or "user_id", opts.col_item or "item_id", opts.col_rating,
                        opts.col_timestamp, opts.col_split)
    return open_log(opts.path, columns, feature_files(opts.feature), opts.name, encoding=opts.encoding)


def read_movielens_source(opts: Any) -> Source:
    from data_pipeline.readers.movielens import read_movielens_1m

    return read_movielens_1m(opts.path, opts.cache_dir)


READERS: dict[str, Reader] = {r.name: r for r in (
    Reader("mmrec", read_mmrec_source,
           features="MMRec features are the <modality>_feat.npy files beside the .inter file"),
    Reader("recbole", read_recbole_source, columns=True),
    Reader("csv", read_tabular_source, columns=True),
    Reader("parquet", read_tabular_source, columns=True),
    Reader("movielens-1m", read_movielens_source, needs_path=False,
           features="MovieLens-1M brings its own modalities (text, genre); add more with --item-text",
           item_plan=MOVIELENS_ITEMS),
    Reader("synthetic", None, needs_path=False),
)}


def misuse(opts: Any) -> str | None:
    """Why the options do not fit `opts.source`'s reader (one line), or None."""
    reader = READERS[opts.source]
    if reader.read is None:
        if opts.path or opts.feature or opts.item_text or opts.items or opts.item_fields:
            return (f"--path/--feature/--item-text/--items/--item-fields are for real sources; "
                    f"--source {reader.name} takes --shape")
        return None
    if reader.needs_path and not opts.path:
        return f"--source {reader.name} needs --path and --out"
    if not opts.out:
        return f"--source {reader.name} needs --out"
    if not reader.columns and (opts.col_user or opts.col_item or opts.col_split):
        return f"--col-* options are for {'/'.join(r.name for r in READERS.values() if r.columns)} sources"
    if reader.features and opts.feature:
        return f"--feature: {reader.features}"
    return None
