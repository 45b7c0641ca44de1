"""Item fields -> modalities: every column of an item table becomes one, or is skipped with a reason.

An item table is a RecBole `.item` file (typed headers `title:token_seq`), a CSV/TSV or a
Parquet file, keyed by the item-id column. Each other column (a *field*) gets a kind:

  text       sentence-encoder embeddings of the field's text (TF-IDF + SVD without the
             `[text]` extra), one row per item
  multi_hot  one column per value (a `token`) or tag (a `token_seq`); above `MAX_TAGS`
             distinct values only the `MAX_TAGS` most frequent are kept (said in the detail)
  dense      the numbers of a `float`/`float_seq` field, each column standardised over the
             items that have a value
  skip       no modality; the reason is printed and recorded

The kind is chosen from the field's type and values (`auto_kind`), preset by a reader
(MovieLens-1M: its texts are composed from three fields), or overridden by the user
(`--item-fields title:text,year:skip`). An item without a value gets a zero row; the share
of items with one is the modality's coverage. Shapes: I items, K rows of the table.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline.errors import DataError
from data_pipeline.features import FeatureSource, array_feature

KINDS = ("text", "multi_hot", "dense", "skip")
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
MAX_TAGS = 512
"""Multi-hot width cap: beyond it the most frequent values are kept (ties by name)."""
MAX_NUMERIC_CODES = 10
"""A number-valued `token` field with at most this many distinct values is a category, else a number."""
TEXT_MIN_WORDS = 2.0
"""Mean words per item from which a string field may be free text rather than a label or a tag list."""


@dataclass(frozen=True)
class ItemField:
    """One column of an item table, aligned to the item universe."""

    name: str
    type: str
    """RecBole type (token, token_seq, float, float_seq); inferred for CSV/Parquet columns."""
    values: list[str | None]
    """[I] the item's raw value, None when it has no row or an empty value."""
    separator: str | None = None
    """How a token_seq splits into tags: None = whitespace (RecBole), else this string."""

    def tags(self, value: str) -> list[str]:
        """The tags of one token_seq value (a token is one tag: the whole value)."""
        if self.type == "token_seq":
            parts = value.split(self.separator) if self.separator else value.split()
            return [p.strip() for p in parts if p.strip()]
        return [value]

    @property
    def present(self) -> list[str]:
        return [v for v in self.values if v is not None]


@dataclass(frozen=True)
class ItemTable:
    """The fields of an item table (its key column excluded) in file order."""

    path: Path
    key: str
    fields: list[ItemField]
    rows: np.ndarray
    """[I] int64: the table row of each item, -1 when the item has none (for messages)."""
    line_offset: int
    """0-based table row -> the line a user sees (2 after a header line; 0 for Parquet rows)."""

    def where(self, item: int) -> str:
        row = int(self.rows[item])
        return f"line {row + self.line_offset}" if self.line_offset else f"row {row}"

    def field(self, name: str) -> ItemField:
        found = [f for f in self.fields if f.name == name]
        if not found:
            raise DataError(f"{self.path}: no item field {name!r}; its fields are "
                            f"{[f.name for f in self.fields]} (key {self.key!r})")
        return found[0]


@dataclass(frozen=True)
class Choice:
    """What a field becomes, and why."""

    kind: str
    reason: str
    by: str = "auto"
    """auto, override (--item-fields) or the reader that preset it."""


@dataclass(frozen=True)
class ComposedText:
    """A text modality written from several fields per item (a reader's preset)."""

    name: str
    fields: tuple[str, ...]
    compose: Callable[[Mapping[str, str | None]], str]
    """One item's field values -> its text ("" = no text for that item)."""
    detail: str


@dataclass(frozen=True)
class ItemPlan:
    """A reader's defaults for its item table: preset choices and composed texts."""

    choices: Mapping[str, Choice] = field(default_factory=dict)
    composed: tuple[ComposedText, ...] = ()


@dataclass
class ItemModalities:
    """The modalities an item table gave (text first, then field order) and the record of every choice."""

    features: dict[str, FeatureSource]
    described: dict[str, dict[str, Any]]
    """Modality -> {kind, fields, coverage, detail} for the manifest and the printed table."""
    fields: list[dict[str, Any]]
    """Every field: {field, type, kind, by, reason, modality}."""


# ---------------------------------------------------------------- reading a table


def read_item_table(path: Path, key: str, item_ids: np.ndarray, encoding: str = "utf-8") -> ItemTable:
    """The item table at `path` (.item, .csv/.tsv, .parquet) with every field aligned to `item_ids` [I];
    DataError when no row matches an item or a key repeats."""
    from data_pipeline.readers.recbole import read_any_table
    from data_pipeline.source import require_columns, string_column

    table, types, off = read_any_table(path, encoding)
    require_columns(path, table.column_names, [key],
                    "The item-id column follows --col-item (default item_id).")
    keys = string_column(path, key, table.column(key), off)
    rows = item_rows(path, key, keys, item_ids, off)
    fields = []
    for name in table.column_names:
        if name == key:
            continue
        col = table.column(name).combine_chunks()
        values = column_strings(col)
        ftype, sep = types.get(name) or inferred_type(col, values), None
        if name not in types and ftype == "token_seq":
            sep = "|"
        aligned = [None if r < 0 or not values[r] else values[r] for r in rows.tolist()]
        fields.append(ItemField(name, ftype, aligned, sep))
    return ItemTable(path, key, fields, rows, off)


def item_rows(path: Path, key: str, keys: np.ndarray, item_ids: np.ndarray, off: int) -> np.ndarray:
    """[I] the row of `keys` [K] holding each item id (-1: none); DataError on a repeated key or no match."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    dup = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if dup.size:
        first = np.sort(order[dup[0]:dup[0] + 2]) + off
        where = "lines" if off else "rows"
        raise DataError(f"{path}: {key} {str(sorted_keys[dup[0]])!r} has more than one row "
                        f"({where} {first[0]} and {first[1]}); keep one")
    pos = np.minimum(np.searchsorted(sorted_keys, item_ids), max(sorted_keys.size - 1, 0))
    found = sorted_keys[pos] == item_ids if sorted_keys.size else np.zeros(item_ids.size, bool)
    if item_ids.size and not found.any():
        raise DataError(f"{path}: none of its {key} values matches an item of the interactions "
                        f"(e.g. {str(keys[0]) if keys.size else 'no rows'!r} vs {str(item_ids[0])!r}); "
                        "check the key column (--col-item) and the id format")
    return np.where(found, order[pos], -1).astype(np.int64)


def column_strings(col: pa.Array) -> list[str]:
    """[K] each cell as trimmed text ("" for null); list cells as space-joined numbers."""
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        return [" ".join(repr(float(x)) for x in v) if v is not None else "" for v in col.to_pylist()]
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
        return ["" if v is None else repr(v) for v in col.to_pylist()]
    text = pc.utf8_trim_whitespace(pc.cast(col, pa.string()).fill_null(""))
    return [str(v) for v in text.to_pylist()]


def inferred_type(col: pa.Array, values: list[str]) -> str:
    """The RecBole type a CSV/Parquet column reads as: float lists, floats, `|`-separated tags or tokens."""
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        return "float_seq"
    if pa.types.is_floating(col.type):
        return "float"
    present = [v for v in values if v]
    if present and sum("|" in v for v in present) * 2 >= len(present):
        return "token_seq"
    return "token"


# ---------------------------------------------------------------- choosing a kind


def parse_item_fields(spec: str) -> dict[str, str]:
    """`title:text,genre:multi_hot,year:skip` (a field may carry its type: `title:token_seq:text`)
    -> field -> kind; DataError for an unknown kind or a malformed entry."""
    choices: dict[str, str] = {}
    for entry in (e.strip() for e in spec.split(",") if e.strip()):
        name, _, kind = entry.rpartition(":")
        base, _, rtype = name.rpartition(":")
        if base and rtype in RECBOLE_TYPES:
            name = base
        if not name or kind not in KINDS:
            raise DataError(f"--item-fields {entry!r}: write FIELD:KIND with KIND one of {KINDS}, "
                            "e.g. title:text,genre:multi_hot,year:skip")
        choices[name] = kind
    return choices


def auto_kind(f: ItemField) -> Choice:
    """The kind a field's type and values suggest, with the reason in words."""
    present = f.present
    if not present:
        return Choice("skip", "no item has a value")
    if f.type == "float_seq":
        return Choice("dense", "float_seq: a vector per item")
    if f.type == "float":
        return Choice("dense", "float: a number per item")
    distinct = len(set(present))
    if f.type == "token" and all(is_number(v) for v in present):
        if distinct <= MAX_NUMERIC_CODES:
            return Choice("multi_hot", f"numeric codes with {distinct} distinct values")
        return Choice("dense", f"numbers with {distinct} distinct values")
    words = sum(len(v.split()) for v in present) / len(present)
    if f.type == "token_seq":
        counts = Counter(t for v in present for t in set(f.tags(v)))
        single = sum(1 for c in counts.values() if c == 1) / len(counts)
        wordy = not all(is_number(t) for t in counts)           # id lists ("12 34 56") are tags, not text
        if f.separator is None and wordy and words >= TEXT_MIN_WORDS and single >= 0.5:
            return Choice("text", f"free text: {words:.1f} words per item, {single:.0%} of its "
                                  f"{len(counts):,} words on one item only")
        return Choice("multi_hot", f"tag list: {len(counts):,} distinct tags, "
                                   f"{sum(len(f.tags(v)) for v in present) / len(present):.1f} per item")
    if words >= TEXT_MIN_WORDS and distinct >= 0.8 * len(present):
        return Choice("text", f"mostly distinct strings of {words:.1f} words")
    if distinct == len(present) and len(present) > 1:
        return Choice("skip", "a different value for every item (an identifier): nothing shared to learn from")
    return Choice("multi_hot", f"a category with {distinct:,} distinct values")


def is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def choose(table: ItemTable, overrides: Mapping[str, str], plan: ItemPlan, no_text: bool) -> dict[str, Choice]:
    """Field -> Choice: an override wins over the reader's preset, which wins over `auto_kind`;
    `no_text` turns text into skip. DataError for an override naming no field."""
    unknown = [n for n in overrides if n not in {f.name for f in table.fields}]
    if unknown:
        raise DataError(f"--item-fields names {unknown}, which {table.path.name} does not have; its fields are "
                        f"{[f.name for f in table.fields]}")
    in_text = {n for c in plan.composed for n in c.fields}                  # fields a preset writes into a text
    choices = {}
    for f in table.fields:
        if f.name in overrides:
            choice = Choice(overrides[f.name], f"--item-fields {f.name}:{overrides[f.name]}", "override")
        elif f.name in plan.choices:
            choice = plan.choices[f.name]
        else:
            choice = auto_kind(f)
        if no_text and choice.kind == "text":
            choice = Choice("skip", f"text, and --no-text asks for none ({choice.reason})", choice.by)
        elif no_text and f.name in in_text and choice.kind == "skip" and choice.by != "override":
            choice = Choice("skip", "part of the text modality, which --no-text leaves out", choice.by)
        choices[f.name] = choice
    return choices


# ---------------------------------------------------------------- building the modalities


def item_modalities(table: ItemTable, encoder: Callable[[], Any],
                    cache_dir: str | Path | None, overrides: Mapping[str, str] | None = None,
                    plan: ItemPlan = ItemPlan(), no_text: bool = False) -> ItemModalities:
    """Every field of `table` as a modality or a skip; `encoder()` gives the text encoder (called
    only when some field is text)."""
    choices = choose(table, overrides or {}, plan, no_text)
    texts: dict[str, tuple[list[str | None], list[str], str]] = {}       # name -> (texts [I], fields, detail)
    if not no_text:
        for c in plan.composed:
            texts[c.name] = (composed_texts(table, c), list(c.fields), c.detail)
    others: dict[str, tuple[FeatureSource, float, str, str]] = {}
    record = []
    for f in table.fields:
        choice = choices[f.name]
        modality = None if choice.kind == "skip" else f.name
        if modality is not None:
            check_modality_name(table.path, modality)
        if choice.kind == "text":
            texts[f.name] = (f.values, [f.name], f"{f.name} ({f.type})")
        elif choice.kind in ("multi_hot", "dense"):
            build = multi_hot if choice.kind == "multi_hot" else dense
            others[f.name] = (*build(table, f), choice.kind)
        record.append({"field": f.name, "type": f.type, "kind": choice.kind, "by": choice.by,
                       "reason": choice.reason, "modality": modality})
    clash = sorted(set(texts) & set(others))
    if clash:
        raise DataError(f"{table.path}: modality {clash[0]!r} would be made twice; skip the field or its preset")
    out = ItemModalities({}, {}, record)
    if texts:
        enc = encoder()
        for name, (values, fields, detail) in texts.items():
            feat, coverage = text_modality(name, table.path, values, enc, cache_dir)
            out.features[name] = feat
            out.described[name] = {"kind": "text", "fields": fields, "coverage": coverage,
                                   "detail": f"{detail}, encoder {enc.name}"}
    for name, (feat, coverage, detail, kind) in others.items():
        out.features[name] = feat
        out.described[name] = {"kind": kind, "fields": [name], "coverage": coverage, "detail": detail}
    return out


def composed_texts(table: ItemTable, c: ComposedText) -> list[str | None]:
    """[I] the composed text per item (None: the item has none of the fields)."""
    columns = {n: table.field(n).values for n in c.fields}
    texts: list[str | None] = []
    for item in range(len(table.rows)):
        row = {n: columns[n][item] for n in c.fields}
        texts.append(c.compose(row) or None if any(v is not None for v in row.values()) else None)
    return texts


def coverage_of(mask: np.ndarray) -> float:
    return round(float(mask.mean()), 6) if mask.size else 0.0


def text_modality(name: str, path: Path, values: Sequence[str | None], encoder: Any,
                  cache_dir: str | Path | None) -> tuple[FeatureSource, float]:
    """(embeddings [I, D] of the items' texts, zero rows where there is none; coverage)."""
    from data_pipeline.text_features import embed_texts

    has = np.array([v is not None for v in values], bool)
    if not has.any():
        raise DataError(f"{path}: field {name!r} has no text for any item; skip it (--item-fields {name}:skip)")
    rows = embed_texts([str(v) for v in values if v is not None], encoder, cache_dir)
    if has.all():
        return array_feature(name, path, rows), 1.0
    full = np.zeros((has.size, rows.shape[1]), np.float32)
    full[has] = rows
    return array_feature(name, path, full), coverage_of(has)


def multi_hot(table: ItemTable, f: ItemField) -> tuple[FeatureSource, float, str]:
    """(0/1 rows [I, V] over the field's values or tags, coverage, detail): columns sorted by
    name; above MAX_TAGS values the MAX_TAGS most frequent (by items, ties by name)."""
    tags = [f.tags(v) if v is not None else [] for v in f.values]
    counts = Counter(t for ts in tags for t in set(ts))
    if not counts:
        raise DataError(f"{table.path}: field {f.name!r} has no value for any item; skip it")
    if len(counts) <= MAX_TAGS:
        kept = sorted(counts)
        detail = f"{f.name} ({f.type}): all {len(kept):,} values"
    else:
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_TAGS]
        kept = sorted(t for t, _ in top)
        share = sum(c for _, c in top) / sum(counts.values())
        detail = (f"{f.name} ({f.type}): top {MAX_TAGS:,} of {len(counts):,} values by item count "
                  f"({share:.0%} of assignments; the rest dropped)")
    column = {t: k for k, t in enumerate(kept)}
    rows = np.zeros((len(tags), len(kept)), np.float32)                   # [I, V]
    for item, ts in enumerate(tags):
        cols = [column[t] for t in ts if t in column]
        rows[item, cols] = 1.0
    return array_feature(f.name, table.path, rows), coverage_of(np.asarray(rows.any(axis=1))), detail


def dense(table: ItemTable, f: ItemField) -> tuple[FeatureSource, float, str]:
    """(standardised numbers [I, D], zero rows for items without a value; coverage, detail).
    DataError naming the line of a non-number or of a vector of another width."""
    parsed: list[list[float] | None] = []
    width = None
    for item, v in enumerate(f.values):
        if v is None:
            parsed.append(None)
            continue
        numbers = []
        for token in v.split():
            if not is_number(token):
                raise DataError(f"{table.path}: column {f.name!r}, {table.where(item)}: {token!r} is not a number; "
                                f"a dense field holds numbers (or choose --item-fields {f.name}:multi_hot or :skip)")
            numbers.append(float(token))
        if width is None:
            width, first = len(numbers), item
        elif len(numbers) != width:
            raise DataError(f"{table.path}: column {f.name!r}, {table.where(item)}: {len(numbers)} values where "
                            f"{table.where(first)} has {width}; every feature vector needs the same width")
        parsed.append(numbers)
    has = np.array([p is not None for p in parsed], bool)
    rows = np.zeros((len(parsed), width or 0), np.float64)              # [I, D]
    rows[has] = np.array([p for p in parsed if p is not None], np.float64)
    mean = rows[has].mean(axis=0)
    std = rows[has].std(axis=0)
    rows[has] = (rows[has] - mean) / np.where(std > 0, std, 1.0)
    return (array_feature(f.name, table.path, rows.astype(np.float32)), coverage_of(has),
            f"{f.name} ({f.type}): standardised over the items with a value")


MODALITY_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_modality_name(path: Path, name: str) -> None:
    """A modality name becomes a file name (features/<name>.npy): letters, digits, _ . - only."""
    if not MODALITY_NAME.match(name):
        raise DataError(f"{path}: field {name!r} cannot name a modality file; rename the column "
                        "(letters, digits, _ . -) or skip it")
