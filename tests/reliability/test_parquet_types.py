"""Parquet interaction columns of a type that cannot hold their role: one line naming the
column and the type expected, never an Arrow error or a silently new user."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.errors import DataError
from data_pipeline.readers.tabular import read_tabular

GOOD = {"user_id": pa.array(["u1", "u1", "u2"]), "item_id": pa.array([10, 11, 10]),
        "rating": pa.array([5.0, 4.0, 5.0]), "timestamp": pa.array([1, 2, 3])}


def parquet_with(tmp_path, **columns: pa.Array):
    path = tmp_path / "inter.parquet"
    pq.write_table(pa.table({**GOOD, **columns}), path)
    return path


@pytest.mark.parametrize(("column", "values", "message"), [
    ("item_id", pa.array([[1], [2], [3]]), "column 'item_id' holds list<element: int64>; expected text (string) or "
                                           "integer ids"),
    ("user_id", pa.array([b"\x00\xff", b"a", b"b"]), "column 'user_id' holds binary; expected text (string) or "
                                                    "integer ids"),
    ("timestamp", pa.array([True, False, True]), "column 'timestamp' holds bool; expected Unix seconds, a Parquet "
                                                 "timestamp or date, or ISO-8601 text"),
    ("rating", pa.array([True, True, False]), "column 'rating' holds bool; expected numbers"),
    ("user_id", pa.array([1.0, 0.5, 2.0]), "column 'user_id', row 1: id 0.5 is not a whole number; expected text "
                                           "(string) or integer ids"),
])
def test_wrong_column_type_is_one_line_naming_column_and_expected_type(tmp_path, column, values, message):
    path = parquet_with(tmp_path, **{column: values})
    with pytest.raises(DataError) as err:
        read_tabular(path)
    assert str(err.value) == f"{path}: {message}"


def test_whole_float_ids_and_dictionary_text_are_read(tmp_path):
    path = parquet_with(tmp_path, user_id=pa.array([1.0, 1.0, 2.0]),
                        item_id=pa.array(["a", "b", "a"]).dictionary_encode())
    source = read_tabular(path)
    assert list(source.user_raw) == ["1", "1", "2"] and list(source.item_ids) == ["a", "b"]


@pytest.mark.parametrize(("column", "values", "message"), [
    ("item_id", pa.array([[1], [2], [3]]), "column 'item_id' holds list<element: int64>; expected text"),
    ("timestamp", pa.array([True, False, True]), "column 'timestamp' holds bool; expected Unix seconds"),
    ("user_id", pa.array([1.0, 0.5, 2.0]), "column 'user_id', row 1: id 0.5 is not a whole number"),
])
def test_the_streaming_prepare_names_the_column_too(job, tmp_path, capsys, column, values, message):
    """jobs/prepare.py streams CSV/Parquet logs: the same one line, exit 2, nothing written."""
    path = parquet_with(tmp_path, **{column: values})
    rc = job("prepare").main(["--source", "parquet", "--path", str(path), "--out", str(tmp_path / "out"),
                              "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"{path}: {message}" in err, err
    assert not (tmp_path / "out").exists()
