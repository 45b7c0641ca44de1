"""Prepare a CSV/TSV/Parquet interaction log (a file or a folder of them) in bounded memory.

The in-memory path (`readers.tabular.read_tabular` + `protocol.apply_protocol`) holds the
whole log in NumPy arrays (≈ 200 bytes per interaction, docs/prepare-memory.md). Here no
step holds more than one record batch, one bucket, the O(|U| + |I|) id maps and per-id
counters:

1. scan (`open_log`): record batches of `batch_rows`, validated with the reader's own
   checks and messages; builds the sorted unique user and item ids and each user's row
   count, loads the item features.
2. partition (`partition_log`): a second scan maps ids to the codes the in-memory path
   would give (same order: numeric when every id is an integer, else string) and appends
   each row to the Parquet bucket of its user's code range. Ranges are cut so that a bucket
   holds at most `bucket_rows` rows, or one user's rows when that user alone has more.
   Rows keep their input order inside a bucket. One scan writes at most `open_buckets`
   buckets (so many files open, so many buckets on the scratch disk); more buckets take
   more scans, each followed by step 3 on its buckets.
3. per bucket, in code order (`stream_protocol`): the protocol on the bucket's rows
   (clean and as_is decide everything per user, and ties in time keep input order, so each
   bucket gives exactly the whole log's rows of its users), shards written as they fill
   (`shards.ShardWriter`), counts, item degrees and evaluation users summed.

The result is byte-identical to the in-memory path's (tested on every protocol branch).
noisy is the exception: its random draws (a uniform sample over all clean rows of a split,
the shuffle of the whole low-rated pool, rejection rounds over every pending slot) come from
one generator in an order that spans the log, and numpy's bounded-integer draws consume a
data-dependent number of bits, so no per-bucket schedule reproduces them; a noisy run
reads the log whole (`TabularLog.materialise`) and takes the in-memory path.

Shapes: N input rows, U users, I items, B rows in a bucket.
"""

from __future__ import annotations

import codecs
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from data_pipeline.errors import DataError
from data_pipeline.features import FeatureSource, npy_feature
from data_pipeline.protocol import ProtocolConfig, ProtocolResult, apply_protocol, check_splits
from data_pipeline.readers.tabular import (
    ColumnMap,
    FeatureFile,
    check_column_types,
    check_npy_rows,
    integral_ids,
    items_and_features,
    optional_column,
    split_labels,
    timestamp_column,
)
from data_pipeline.shards import ShardWriter, user_rows
from data_pipeline.source import SPLIT_NAMES, Source, index_ids, numeric_column, require_columns, string_column
from data_pipeline.text_encoding import encoding_error

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
DEFAULT_COLUMNS = ColumnMap()


@dataclass(frozen=True)
class StreamLimits:
    """How much of the log one step may hold."""

    batch_rows: int = 1 << 18
    """Rows per record batch read from a Parquet file (CSV: `batch_bytes` of text per block)."""
    batch_bytes: int = 16 << 20
    """Bytes of CSV/TSV text parsed per block."""
    bucket_rows: int = 1 << 20
    """Most rows in one bucket (one user with more rows gets a bucket of its own)."""
    open_buckets: int = 256
    """Most bucket files written (open) at once, and on the scratch disk at once: with more
    buckets, the log is scanned once per group of `open_buckets` buckets."""

    def __post_init__(self) -> None:
        if min(self.batch_rows, self.batch_bytes, self.bucket_rows, self.open_buckets) < 1:
            raise DataError(f"stream limits {self}: every limit must be ≥ 1")


@dataclass
class Batch:
    """One record batch of the log, validated: [n] arrays, `first_row` its 0-based row in the log,
    `line` the line offset of its first row in `file` (what error messages add to a batch row)."""

    file: Path
    line: int
    first_row: int
    users: pa.Array
    """[n] user ids, trimmed strings (Arrow: looked up by hash, never turned into Python strings)."""
    items: pa.Array
    rating: np.ndarray | None
    timestamp: np.ndarray | None
    split: np.ndarray | None


@dataclass
class TabularLog:
    """A CSV/TSV/Parquet log scanned once: id maps, per-user counts and features, not its rows."""

    name: str
    format: str
    inputs: list[Path]
    """The interaction files, in the order their rows are read."""
    columns: ColumnMap
    encoding: str
    limits: StreamLimits
    present: dict[str, str | None]
    """Column role (rating, timestamp, split) -> the column used, or None when absent."""
    n_rows: int
    user_lookup: pa.Array
    """[U] the user ids in string order (what batches are looked up in)."""
    user_code_of_sorted: np.ndarray
    """[U] int64: the code (dataset order) of each `user_lookup` id."""
    user_ids: np.ndarray
    """[U] str: code -> user id."""
    user_rows: np.ndarray
    """[U] int64: rows per user code."""
    item_lookup: pa.Array
    item_index_of_sorted: np.ndarray
    item_ids: np.ndarray
    features: dict[str, FeatureSource] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    """Every input file (recorded in the manifest with its sha256)."""
    item_table: Path | None = None
    """An item table whose fields become modalities (`modalities.add_modalities`); a log has none."""

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    def batches(self) -> Iterator[Batch]:
        """The log's validated record batches, in row order."""
        return scan_batches(self.inputs, self.columns, self.present, self.encoding, self.limits)

    def coded(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(user code [n], item index [n]) of a batch."""
        users = self.user_code_of_sorted[position(self.user_lookup, batch.users)]
        return users, self.item_index_of_sorted[position(self.item_lookup, batch.items)]

    def materialise(self) -> Source:
        """The whole log as a `Source` (what `read_tabular` returns): for the noisy setting."""
        parts = list(self.batches())
        items = np.concatenate([self.coded(b)[1] for b in parts])

        def joined(name: str) -> np.ndarray | None:
            arrays = [getattr(b, name) for b in parts]
            return None if arrays[0] is None else np.concatenate(arrays)

        users = np_strings(pa.concat_arrays([b.users for b in parts]))
        return Source(name=self.name, format=self.format, user_raw=users, item_N=items, item_ids=self.item_ids,
                      rating=joined("rating"), timestamp=joined("timestamp"), split=joined("split"),
                      features=self.features, files=self.files, item_table=self.item_table)


def log_files(path: Path) -> list[Path]:
    """The interaction files of `path`: itself, or a folder's tables in name order."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: a folder with no .csv/.tsv/.parquet files; point --path at the log")
        return files
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unknown table type {path.suffix.lower()!r}; use .csv, .tsv or .parquet")
    return [path]


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def column_names(path: Path, encoding: str) -> list[str]:
    """The header of a text table, or a Parquet file's column names."""
    if is_parquet(path):
        try:
            return list(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"--encoding {encoding!r}: unknown text encoding; use e.g. utf-8, latin-1 or cp1252") from None
    with open(path, encoding=encoding, errors="replace") as fh:
        header = fh.readline().rstrip("\r\n")
    if not header:
        raise DataError(f"{path}: the file is empty; it needs a header line naming its columns")
    return header.split(delimiter(path))


def delimiter(path: Path) -> str:
    return "," if path.suffix.lower() == ".csv" else "\t"


def record_batches(path: Path, encoding: str, limits: StreamLimits) -> Iterator[pa.RecordBatch]:
    """A file's record batches: Parquet row groups sliced to `batch_rows`, or CSV blocks with
    every column a (non-null) string, parsed exactly as `source.read_delimited` does."""
    if is_parquet(path):
        # pre_buffer (the default) reads ahead and holds whole row groups: 3x the memory here
        yield from pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=limits.batch_rows)
        return
    names = column_names(path, encoding)
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, encoding=encoding,
                                           block_size=limits.batch_bytes),
            parse_options=pacsv.ParseOptions(delimiter=delimiter(path), quote_char='"'),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False))
        yield from reader
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise encoding_error(path, encoding) or DataError(
            f"{path}: cannot parse as a {delimiter(path)!r}-separated table with columns {names}: "
            f"{str(err).splitlines()[0]}; fix the malformed line") from None


def scan_batches(files: list[Path], columns: ColumnMap, present: dict[str, str | None], encoding: str,
                 limits: StreamLimits) -> Iterator[Batch]:
    """Validated batches of every file in turn; errors name the file and its line (or Parquet row)."""
    row = 0
    first_time: pa.Array | None = None   # the log's first timestamp: it fixes the text format (number or ISO)
    for path in files:
        off, start = (0 if is_parquet(path) else 2), 0
        for rb in record_batches(path, encoding, limits):
            if rb.num_rows == 0:
                continue
            line = off + start
            ts = None
            if present["timestamp"]:
                col = rb.column(present["timestamp"])
                if first_time is not None and pa.types.is_string(col.type):
                    ts = timestamp_column(path, present["timestamp"], pa.chunked_array([first_time, col]),
                                          line - 1)[1:]
                else:
                    ts = timestamp_column(path, present["timestamp"], pa.chunked_array([col]), line)
                    first_time = col.slice(0, 1)
            user_ids, item_ids = (integral_ids(path, c, rb.column(c), start) for c in (columns.user, columns.item))
            yield Batch(path, line, row, id_strings(path, columns.user, user_ids, line),
                        id_strings(path, columns.item, item_ids, line),
                        numeric_column(path, present["rating"], rb.column(present["rating"]), line_offset=line)
                        if present["rating"] else None, ts,
                        split_labels(path, present["split"], pa.chunked_array([rb.column(present["split"])]), line)
                        if present["split"] else None)
            row += rb.num_rows
            start += rb.num_rows


def merge_counts(ids: pa.Array, counts: np.ndarray, new: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Unique ids and their row counts, after adding the ids of `new` (new ids appended)."""
    fresh, n = pc.value_counts(new).flatten()
    at = pc.index_in(fresh, value_set=ids).fill_null(-1).to_numpy(zero_copy_only=False)
    n = n.to_numpy(zero_copy_only=False)
    seen = at >= 0
    counts[at[seen]] += n[seen]   # fresh ids are distinct: no repeated index
    unseen = pa.array(~seen)
    return pa.concat_arrays([ids, fresh.filter(unseen)]), np.concatenate([counts, n[~seen]])


def np_strings(ids: pa.Array) -> np.ndarray:
    """Arrow strings as a NumPy str array (what `source.string_column` returns)."""
    return np.asarray(ids.to_numpy(zero_copy_only=False), dtype=str)


def position(lookup: pa.Array, ids: pa.Array) -> np.ndarray:
    """[n] int64 index of each id in `lookup` (every id is there: the scan collected them)."""
    return pc.index_in(ids, value_set=lookup).to_numpy(zero_copy_only=False).astype(np.int64)


def id_strings(path: Path, column: str, arr: pa.Array, line: int) -> pa.Array:
    """Ids as trimmed Arrow strings; an empty or missing id is `string_column`'s DataError."""
    ids = pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))
    if ids.null_count or pc.any(pc.equal(pc.utf8_length(ids), 0)).as_py():
        string_column(path, column, arr, line)   # raises, naming the line
    return ids


def open_log(path: str | Path, columns: ColumnMap = DEFAULT_COLUMNS, features: tuple[FeatureFile, ...] = (),
             name: str | None = None, encoding: str = "utf-8", limits: StreamLimits = StreamLimits()) -> TabularLog:
    """Scan a CSV/TSV/Parquet log (or a folder of them, read in name order) once: validate it,
    build its id maps and load its item features. Holds one batch and O(U + I) at a time."""
    path = Path(path)
    inputs = log_files(path)
    names = column_names(inputs[0], encoding)
    for other in inputs[1:]:
        if column_names(other, encoding) != names:
            raise DataError(f"{other}: columns {column_names(other, encoding)} differ from {inputs[0].name}'s {names}; "
                            "every file of the log needs the same header")
    require_columns(inputs[0], names, [columns.user, columns.item], "Map them with --col-user / --col-item.")
    defaults = ColumnMap()
    present = {"rating": optional_column(inputs[0], names, columns.rating, defaults.rating, "--col-rating"),
               "timestamp": optional_column(inputs[0], names, columns.timestamp, defaults.timestamp, "--col-timestamp"),
               "split": optional_column(inputs[0], names, columns.split, None, "--col-split")}
    for parquet in (f for f in inputs if is_parquet(f)):  # a list, binary or boolean column: one line, up front
        check_column_types(parquet, pq.ParquetFile(parquet).schema_arrow, {columns.user: "id", columns.item: "id",
                           **{present[k]: role for k, role in (("rating", "number"), ("timestamp", "timestamp"),
                                                                ("split", "split"))}})
    npys = [f for f in features if f.path.suffix.lower() == ".npy"]
    users, user_counts = pa.array([], pa.string()), np.zeros(0, np.int64)
    items = pa.array([], pa.string())
    max_item, max_at = -1, (inputs[0], 0)
    n_rows = 0
    for batch in scan_batches(inputs, columns, present, encoding, limits):
        users, user_counts = merge_counts(users, user_counts, batch.users)
        items = pc.unique(pa.concat_arrays([items, batch.items]))
        if npys:   # .npy rows are item ids: every id must be an integer in range
            ids = numeric_column(batch.file, "item id", batch.items, integer=True, nonnegative=True,
                                 line_offset=batch.line)
            if ids.max() > max_item:
                max_item, max_at = int(ids.max()), (batch.file, batch.line + int(np.argmax(ids)))
        n_rows += len(batch.users)
    if n_rows == 0:
        raise DataError(f"{path}: holds no interactions")
    for f in npys:
        check_npy_rows(max_at[0], np.array([max_item]), npy_feature(f.modality, f.path), max_at[1])
    item_sorted = np.unique(np_strings(items))
    item_index, item_ids, feats = items_and_features(path, item_sorted, features, 0)
    user_strings = np_strings(users)
    user_sorted = np.sort(user_strings)
    user_code, user_ids = index_ids(user_sorted)
    per_code = np.zeros(user_sorted.size, np.int64)
    per_code[user_code[np.searchsorted(user_sorted, user_strings)]] = user_counts
    return TabularLog(name=name or path.stem, format="parquet" if is_parquet(inputs[0]) else "csv", inputs=inputs,
                      columns=columns, encoding=encoding, limits=limits, present=present, n_rows=n_rows,
                      user_lookup=pa.array(user_sorted, pa.string()), user_code_of_sorted=user_code, user_ids=user_ids,
                      user_rows=per_code, item_lookup=pa.array(item_sorted, pa.string()),
                      item_index_of_sorted=item_index, item_ids=item_ids, features=feats,
                      files=inputs + [f.path for f in features])


def bucket_bounds(rows_per_user: np.ndarray, bucket_rows: int) -> np.ndarray:
    """[n_buckets + 1] user-code bounds: bucket b holds codes bounds[b] ≤ u < bounds[b + 1], at
    most `bucket_rows` rows, or the rows of its one user when that user alone has more."""
    ends = np.cumsum(rows_per_user)
    bounds = [0]
    while bounds[-1] < rows_per_user.size:
        start = bounds[-1]
        before = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, before + bucket_rows, side="right"))
        bounds.append(max(stop, start + 1))
    return np.asarray(bounds, np.int64)


BUCKET_SCHEMA = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "timestamp": pa.float64(),
                 "split": pa.int8(), "row": pa.int64()}


def partition_log(log: TabularLog, bounds: np.ndarray, first: int, last: int, folder: Path) -> list[Path]:
    """One scan of the log writing buckets first ≤ b < last (at most `open_buckets`), one Parquet
    file each with its rows in input order; their paths, in code order. Rows of other buckets
    are skipped: a later scan writes them."""
    if last - first > log.limits.open_buckets:
        raise ValueError(f"buckets {first}..{last - 1}: more than open_buckets={log.limits.open_buckets} at once")
    folder.mkdir(parents=True, exist_ok=True)
    cols = ["user", "item"] + [c for c in ("rating", "timestamp", "split") if log.present[c]] + ["row"]
    schema = pa.schema([(c, BUCKET_SCHEMA[c]) for c in cols])
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for batch in log.batches():
            users, items = log.coded(batch)
            bucket = np.searchsorted(bounds, users, side="right") - 1               # [n]
            mine = np.flatnonzero((bucket >= first) & (bucket < last))
            if mine.size == 0:
                continue
            order = mine[np.argsort(bucket[mine], kind="stable")]                   # input order within a bucket
            given = {"user": users, "item": items, "rating": batch.rating, "timestamp": batch.timestamp,
                     "split": batch.split, "row": batch.first_row + np.arange(users.size)}
            values = {c: v for c, v in given.items() if v is not None}   # the columns the log has
            table = pa.table({c: pa.array(values[c][order], BUCKET_SCHEMA[c]) for c in cols}, schema=schema)
            buckets, starts = np.unique(bucket[order], return_index=True)
            for b, lo, hi in zip(buckets.tolist(), starts, np.append(starts[1:], order.size), strict=True):
                if b not in writers:
                    writers[b] = pq.ParquetWriter(folder / f"bucket-{b:06d}.parquet", schema, compression="lz4")
                writers[b].write_table(table.slice(lo, hi - lo))
    finally:
        for w in writers.values():
            w.close()
    return [folder / f"bucket-{b:06d}.parquet" for b in sorted(writers)]


@dataclass
class SplitsWritten:
    """What the writer needs of the protocol's result once the shards are on disk."""

    split_files: dict[str, list[dict[str, Any]]]
    counts: dict[str, Any]
    eval_users: dict[str, int]
    item_degree: np.ndarray
    user_ids: np.ndarray
    """[U'] str: dataset user index -> original id (users that keep ≥ 1 interaction)."""
    split_source: str
    chronology: str


def add_counts(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """`total` + `part`, key by key (nested dicts too), in `total`'s key order."""
    return {k: add_counts(v, part[k]) if isinstance(v, dict) else v + part[k] for k, v in total.items()}


def bucket_protocol(bucket: Path, log: TabularLog, setting: str, cfg: ProtocolConfig) -> ProtocolResult:
    """The protocol on one bucket's rows (every row of its users, in input order)."""
    table = pq.read_table(bucket)

    def column(name: str) -> np.ndarray | None:
        return table.column(name).to_numpy() if name in table.column_names else None

    return apply_protocol(table.column("user").to_numpy(), table.column("item").to_numpy(), log.n_items,
                          column("rating"), column("timestamp"), column("split"), setting, cfg, whole_log=False)


def stream_protocol(log: TabularLog, setting: str, cfg: ProtocolConfig, folder: Path, scratch: Path,
                    rows_per_shard: int) -> SplitsWritten:
    """Shards of every split in `folder`/<split>/, bucket by bucket; `scratch` holds the buckets
    meanwhile and is removed before returning."""
    bounds = bucket_bounds(log.user_rows, log.limits.bucket_rows)
    writers = {s: ShardWriter(folder / s, rows_per_shard) for s in SPLIT_NAMES}
    degree = np.zeros(log.n_items, np.int64)
    kept_users = np.zeros(log.user_ids.size, bool)
    eval_users = {"valid": 0, "test": 0}
    counts: dict[str, Any] | None = None
    result = None
    try:
        for first in range(0, bounds.size - 1, log.limits.open_buckets):
            last = min(first + log.limits.open_buckets, bounds.size - 1)
            for bucket in partition_log(log, bounds, first, last, scratch):
                result = bucket_protocol(bucket, log, setting, cfg)
                bucket.unlink()
                offset = int(kept_users.sum())   # dataset index of the bucket's first kept user
                kept_users[result.users] = True
                for name in SPLIT_NAMES:
                    users, items = result.splits[name]
                    writers[name].add(user_rows(offset + np.searchsorted(result.users, users), items))
                degree += np.bincount(result.splits["train"][1], minlength=log.n_items)
                train = np.unique(result.splits["train"][0])
                for name in eval_users:
                    eval_users[name] += int(np.intersect1d(np.unique(result.splits[name][0]), train).size)
                counts = result.counts if counts is None else add_counts(counts, result.counts)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert counts is not None and result is not None  # open_log refuses an empty log
    check_splits(counts["kept_per_split"], log.present["split"] is not None)
    return SplitsWritten({s: w.close() for s, w in writers.items()}, counts, eval_users, degree,
                          log.user_ids[kept_users], result.split_source, result.chronology)
