"""Reader helpers: delimited text as strings, numeric/id columns with errors naming the line."""

import numpy as np
import pyarrow as pa
import pytest

from data_pipeline.errors import DataError
from data_pipeline.source import Source, index_ids, numeric_column, read_delimited, require_columns, string_column


def test_read_delimited_keeps_every_column_as_text(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text("user\titem\trating\nu1\t007\t4.5\nu2\t10\t3\n")
    table = read_delimited(path, "\t")
    assert table.column_names == ["user", "item", "rating"]
    assert table.column("item").to_pylist() == ["007", "10"]  # leading zeros kept: ids are strings


def test_read_delimited_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="absent.csv: file not found"):
        read_delimited(tmp_path / "absent.csv", ",")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv: the file is empty"):
        read_delimited(tmp_path / "empty.csv", ",")


def test_require_columns_lists_missing_and_found(tmp_path):
    require_columns(tmp_path / "x.csv", ["a", "b"], ["a"])
    with pytest.raises(DataError, match=r"missing column\(s\) \['c'\]; found \['a', 'b'\]"):
        require_columns(tmp_path / "x.csv", ["a", "b"], ["a", "c"])


def test_numeric_column_parses_and_names_the_first_bad_line(tmp_path):
    path = tmp_path / "r.csv"
    assert numeric_column(path, "rating", pa.array([" 4 ", "3.5"])).tolist() == [4.0, 3.5]
    assert numeric_column(path, "user", pa.array(["7", "12"]), integer=True).dtype == np.int64
    with pytest.raises(DataError, match=r"column 'rating', line 3: not a number \(value 'five'\)"):
        numeric_column(path, "rating", pa.array(["4", "five"]))
    with pytest.raises(DataError, match="line 2: ids must be integers"):
        numeric_column(path, "user", pa.array(["1.5"]), integer=True)
    with pytest.raises(DataError, match="line 4: ids must be non-negative"):
        numeric_column(path, "user", pa.array(["1", "2", "-3"]), integer=True, nonnegative=True)
    with pytest.raises(DataError, match="line 2: not a finite number"):
        numeric_column(path, "rating", pa.array(["inf"]))


def test_string_column_refuses_empty_ids(tmp_path):
    assert string_column(tmp_path / "r.csv", "item", pa.array([" a", "b "])).tolist() == ["a", "b"]
    with pytest.raises(DataError, match="column 'item', line 3: empty id"):
        string_column(tmp_path / "r.csv", "item", pa.array(["a", "  "]))


def test_index_ids_orders_integer_ids_numerically_else_as_strings():
    codes, uniques = index_ids(np.array(["10", "9", "10", "100"]))
    assert uniques.tolist() == ["9", "10", "100"] and codes.tolist() == [1, 0, 1, 2]
    codes, uniques = index_ids(np.array(["b", "a", "b"]))
    assert uniques.tolist() == ["a", "b"] and codes.tolist() == [1, 0, 1]
    codes, uniques = index_ids(np.array([5, 3, 5]))
    assert uniques.tolist() == ["3", "5"] and codes.tolist() == [1, 0, 1]


def test_source_counts_rows_and_items():
    src = Source("s", "csv", user_raw=np.array(["u", "v"]), item_N=np.array([0, 0]), item_ids=np.array(["i"]))
    assert (src.n_rows, src.n_items) == (2, 1)
