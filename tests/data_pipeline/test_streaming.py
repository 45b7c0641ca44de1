"""The streaming prepare path: same datasets as the in-memory path, memory bounded by its limits."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.errors import DataError
from data_pipeline.prepare import prepare_dataset
from data_pipeline.protocol import apply_protocol
from data_pipeline.readers.tabular import ColumnMap
from data_pipeline.shards import SCHEMA, ShardWriter, user_rows, write_shards
from data_pipeline.streaming import StreamLimits, bucket_bounds, open_log, partition_log

sys.path.insert(0, str(Path(__file__).parent))   # the shared tiny inputs beside this file
from prepare_inputs import (
    CASES,
    EXPECTED,
    SYNTHETIC,
    manifest_sha256,
    prepare_in_memory,
    prepare_synthetic_tiny,
    write_csv,
)

RECORDED = json.loads(EXPECTED.read_text())
# small enough that every case is read in several batches and cut into several buckets,
# written in several scans of at most 4 buckets each
TINY = StreamLimits(batch_rows=100, batch_bytes=1024, bucket_rows=60, open_buckets=4)


def prepare_streaming(case, folder: Path, limits: StreamLimits = TINY) -> Path:
    inter = case.write(folder)
    log = open_log(inter, case.columns, case.features(folder), limits=limits)
    return Path(prepare_dataset(log, case.setting, folder / "ds", seed=case.seed, rows_per_shard=case.rows_per_shard,
                                protocol=case.protocol, progress=False))


@pytest.mark.parametrize("name", list(CASES))
def test_streaming_and_in_memory_give_the_recorded_manifest(name, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert manifest_sha256(prepare_streaming(CASES[name], tmp_path / "a")) == RECORDED[name]
    assert manifest_sha256(prepare_in_memory(CASES[name], tmp_path / "b")) == RECORDED[name]
    assert not list(tmp_path.glob("*/.*"))   # no temporary or bucket folder left behind


@pytest.mark.parametrize("setting", SYNTHETIC)
def test_synthetic_datasets_keep_their_recorded_manifest(setting, tmp_path):
    assert manifest_sha256(prepare_synthetic_tiny(setting, tmp_path)) == RECORDED[f"synthetic-tiny-{setting}"]


def test_bucket_bounds_cap_rows_except_for_one_heavy_user():
    assert bucket_bounds(np.array([3, 1, 4, 1, 5]), 5).tolist() == [0, 2, 4, 5]
    assert bucket_bounds(np.array([10, 1, 1]), 3).tolist() == [0, 1, 3]
    rows = np.random.default_rng(0).integers(1, 9, 500)
    bounds = bucket_bounds(rows, 20)
    sizes = np.add.reduceat(rows, bounds[:-1])
    users = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == rows.size and (users >= 1).all()
    assert ((sizes <= 20) | (users == 1)).all()
    assert (sizes[:-1] + rows[bounds[1:-1]] > 20).all()   # greedy: the next user would not have fitted


def test_partition_honours_the_limits(tmp_path):
    rng = np.random.default_rng(3)
    n = 400
    users = rng.integers(0, 40, n)
    users[:60] = 7                                                   # one user above the bucket limit
    pq.write_table(pa.table({"user_id": users, "item_id": rng.integers(0, 30, n), "rating": rng.integers(1, 6, n)}),
                   tmp_path / "log.parquet")
    limits = StreamLimits(batch_rows=16, bucket_rows=50, open_buckets=3)
    log = open_log(tmp_path / "log.parquet", limits=limits)
    assert max(len(b.users) for b in log.batches()) == limits.batch_rows
    bounds = bucket_bounds(log.user_rows, limits.bucket_rows)
    assert bounds.size - 1 > limits.open_buckets
    with pytest.raises(ValueError, match="more than open_buckets=3"):
        partition_log(log, bounds, 0, 4, tmp_path / "scratch")
    seen = []
    for first in range(0, bounds.size - 1, limits.open_buckets):
        last = min(first + limits.open_buckets, bounds.size - 1)
        buckets = partition_log(log, bounds, first, last, tmp_path / f"scratch{first}")
        assert len(buckets) == last - first and len(list((tmp_path / f"scratch{first}").iterdir())) == len(buckets)
        for b, path in zip(range(first, last), buckets, strict=True):
            table = pq.read_table(path)
            codes = table.column("user").to_numpy()
            assert ((bounds[b] <= codes) & (codes < bounds[b + 1])).all()
            assert table.num_rows <= limits.bucket_rows or np.unique(codes).size == 1
            assert (np.diff(table.column("row").to_numpy()) > 0).all()   # input order kept
            seen.append(table.column("row").to_numpy())
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(n))
    heavy = int(log.user_code_of_sorted[log.user_lookup.index("7").as_py()])
    assert log.user_rows[heavy] > limits.bucket_rows and heavy + 1 in bounds and heavy in bounds


def test_shard_writer_holds_at_most_one_shard_and_matches_writing_the_whole_table(tmp_path):
    rng = np.random.default_rng(1)
    users = np.sort(rng.integers(0, 50, 400))
    items = rng.integers(0, 20, 400)
    order = np.lexsort((items, users))
    table = user_rows(users[order], items[order])
    whole = write_shards(table, tmp_path / "whole", 9)
    writer = ShardWriter(tmp_path / "pieces", 9)
    start = 0
    for size in (1, 17, 0, 4, 30, 100):
        writer.add(table.slice(start, size))
        start += size
        assert writer.pending_rows < 9
    assert start >= table.num_rows
    pieces = writer.close()
    assert [e["sha256"] for e in pieces] == [e["sha256"] for e in whole] and len(whole) == -(-table.num_rows // 9)
    empty = ShardWriter(tmp_path / "empty", 9).close()
    assert len(empty) == 1 and pq.read_table(tmp_path / "empty" / "part-00000.parquet").schema == SCHEMA


def test_a_folder_of_files_is_one_log(tmp_path):
    case = CASES["mixed-clean"]
    one = prepare_streaming(case, tmp_path)
    lines = (tmp_path / "log.csv").read_text().splitlines()
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.csv").write_text("\n".join(lines[:70]) + "\n")
    (tmp_path / "parts" / "b.csv").write_text("\n".join(lines[:1] + lines[70:]) + "\n")
    log = open_log(tmp_path / "parts", case.columns, case.features(tmp_path), limits=TINY)
    two = Path(prepare_dataset(log, case.setting, tmp_path / "ds2", rows_per_shard=case.rows_per_shard,
                               progress=False))
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert a["files"] == b["files"] and a["counts"] == b["counts"]
    assert [f["name"] for f in b["source"]["files"]] == ["a.csv", "b.csv", "text.parquet"]
    (tmp_path / "parts" / "c.csv").write_text("who,what\nx,1\n")
    with pytest.raises(DataError, match="c.csv: columns .* differ"):
        open_log(tmp_path / "parts", case.columns, limits=TINY)


def test_errors_name_the_line_in_a_later_batch(tmp_path):
    rows = {"user_id": np.arange(60) % 5, "item_id": np.arange(60), "rating": np.full(60, 5).astype(object),
            "timestamp": np.arange(60).astype(object)}
    rows["rating"][40] = "lots"
    write_csv(tmp_path, rows)
    limits = StreamLimits(batch_bytes=64)
    with pytest.raises(DataError, match=r"column 'rating', line 42: not a number"):
        open_log(tmp_path / "log.csv", limits=limits)
    rows["rating"][40] = 5
    rows["timestamp"][50] = "2024-03-01"   # the first row's timestamp is a number: so must every row's be
    write_csv(tmp_path, rows)
    with pytest.raises(DataError, match=r"line 52: timestamp '2024-03-01' is not a number like the first row's '0'"):
        open_log(tmp_path / "log.csv", limits=limits)


def test_empty_splits_are_refused_over_the_whole_log_and_nothing_is_left(tmp_path):
    write_csv(tmp_path, {"user_id": np.arange(6), "item_id": np.arange(6), "rating": np.full(6, 5)})
    log = open_log(tmp_path / "log.csv", limits=StreamLimits(bucket_rows=2))
    with pytest.raises(DataError, match="the valid split is empty"):
        prepare_dataset(log, "clean", tmp_path / "ds", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_noisy_refuses_to_run_on_part_of_the_log():
    one = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="whole log"):
        apply_protocol(one, np.arange(3), 3, None, None, None, "noisy", whole_log=False)


def test_bad_limits_and_columns_are_refused(tmp_path):
    with pytest.raises(DataError, match="must be ≥ 1"):
        StreamLimits(bucket_rows=0)
    write_csv(tmp_path, {"user_id": np.arange(3), "item_id": np.arange(3)})
    with pytest.raises(DataError, match="no column 'stars'"):
        open_log(tmp_path / "log.csv", ColumnMap(rating="stars"))
    with pytest.raises(DataError, match="file not found"):
        open_log(tmp_path / "nope.csv")


def test_the_prepare_job_streams_csv_and_parquet_logs(tmp_path):
    from data_pipeline.readers.registry import READERS

    write_csv(tmp_path, {"user_id": np.arange(3), "item_id": np.arange(3)})
    for name in ("csv", "parquet"):
        read = READERS[name].read
        assert read is not None
        source = read(SimpleNamespace(path=tmp_path / "log.csv", col_user=None, col_item=None, col_rating="rating",
                                      col_timestamp="timestamp", col_split=None, feature=[], name=None,
                                      encoding="utf-8"))
        assert type(source).__name__ == "TabularLog" and source.n_rows == 3
