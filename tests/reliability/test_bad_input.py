"""Bad input as real exports carry it: each is read correctly or refused with one line
that names the file, the line/row (the user's, not our index) and the fix."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.errors import DataError
from data_pipeline.readers.tabular import ColumnMap, FeatureFile, read_tabular

REPO = Path(__file__).resolve().parents[2]


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def prepare_cli():
    """jobs/prepare.py as a module (its `main(argv)`)."""
    spec = importlib.util.spec_from_file_location("prepare_cli_under_test", REPO / "jobs" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ malformed YAML


BAD_YAML = "train:\n  lr: 0.001\n  epochs: [1, 2\nmodel:\n  hidden: 64\n"


def test_malformed_config_yaml_names_file_and_line(tmp_path):
    from ld4mrec_dist.config import ConfigError, load_config

    path = tmp_path / "my.yaml"
    path.write_text(BAD_YAML)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = one_line(err)
    assert "<unicode string>" not in msg
    assert msg.startswith(f"{path}, line 4, column 6: invalid YAML") and "started at line 3" in msg, msg


def test_malformed_sweep_yaml_names_file_and_line(tmp_path):
    from ld4mrec_dist.config import ConfigError
    from ld4mrec_dist.tune.search_space import load_sweep

    path = tmp_path / "sweep.yaml"
    path.write_text("grid:\n  diffusion.sr_prob: [0.01, 0.1]\n\tnum_samples: 2\n")
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    msg = one_line(err)
    assert "<unicode string>" not in msg and msg.startswith(f"{path}, line 3"), msg


def test_non_utf8_config_names_file_and_line(tmp_path):
    from ld4mrec_dist.config import ConfigError, load_config

    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  lr: 0.001\nrun:\n  name: café\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert one_line(err) == f"{path}, line 4: not UTF-8 text (byte 0xe9); save it as UTF-8"


# ------------------------------------------------------------------ ISO-8601 timestamps


def test_iso8601_timestamps_in_csv_are_read_in_chronological_order(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id,timestamp\n"
                    "a,1,2024-03-01T12:30:00Z\n"
                    "a,2,2024-03-01T13:30:00+02:00\n"   # = 11:30 UTC: earlier than the row above
                    "a,3,2024-03-02\n"
                    "a,4,2024-03-01 12:30:00.5\n")
    src = read_tabular(path)
    base = 1709296200.0  # 2024-03-01T12:30:00Z
    np.testing.assert_allclose(src.timestamp, [base, base - 3600, base + 11.5 * 3600, base + 0.5])


def test_timestamps_in_parquet_iso_text_subsecond_and_dates(tmp_path):
    import datetime as dt

    base = dt.datetime(2024, 3, 1, 12, 30, tzinfo=dt.UTC)
    stamps = pa.array([base, base + dt.timedelta(milliseconds=250)], pa.timestamp("ms", tz="UTC"))
    for column, expected in (
        (pa.array(["2024-03-01T12:30:00Z", "2024-03-01T12:30:01Z"]), [1709296200.0, 1709296201.0]),
        (stamps, [1709296200.0, 1709296200.25]),   # sub-second: a pyarrow cast error before
        (pa.array([dt.date(2024, 3, 1), dt.date(2024, 3, 2)], pa.date32()), [1709251200.0, 1709337600.0]),
    ):
        pq.write_table(pa.table({"user_id": ["a", "a"], "item_id": ["1", "2"], "timestamp": column}),
                       tmp_path / "r.parquet")
        np.testing.assert_allclose(read_tabular(tmp_path / "r.parquet").timestamp, expected)


def test_an_unreadable_timestamp_says_which_formats_are_accepted(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id,timestamp\na,1,2024-03-01T12:30:00Z\na,2,01/03/2024\n")
    with pytest.raises(DataError) as err:
        read_tabular(path)
    msg = one_line(err)
    assert f"{path}: column 'timestamp', line 3: timestamp '01/03/2024' is not an ISO-8601 date-time" in msg
    assert "Unix seconds (e.g. 1709296200) or ISO-8601 (e.g. 2024-03-01T12:30:00Z" in msg
    path.write_text("user_id,item_id,timestamp\na,1,1709296200\na,2,2024-03-01\n")
    with pytest.raises(DataError, match=r"line 3: timestamp '2024-03-01' is not a number like the first row's"):
        read_tabular(path)
    path.write_text("user_id,item_id,timestamp\na,1,2024-03-01\na,2, \n")
    with pytest.raises(DataError, match=r"'timestamp', line 3: empty timestamp; fill it in or remove that row"):
        read_tabular(path)


# ------------------------------------------------------------------ text encoding


def latin1_csv(path: Path) -> Path:
    path.write_bytes("user_id,item_id,title\nu1,1,plain\nu2,2,Café crème\nu3,3,naïve\n".encode("latin-1"))
    return path


def test_latin1_csv_names_the_line_and_the_encoding_option(tmp_path):
    path = latin1_csv(tmp_path / "r.csv")
    with pytest.raises(DataError) as err:
        read_tabular(path)
    msg = one_line(err)
    assert msg.startswith(f"{path}: line 3 is not valid utf-8 text (byte 0xe9)"), msg
    assert "pass --encoding latin-1" in msg
    src = read_tabular(path, encoding="latin-1")
    assert src.n_rows == 3
    with pytest.raises(DataError, match="--encoding 'latin-9000': unknown text encoding"):
        read_tabular(path, encoding="latin-9000")


def test_prepare_cli_encoding_option(tmp_path, capsys):
    path = tmp_path / "r.csv"
    rows = [f"user{u},{i},5,{k}" for u in range(4) for k, i in enumerate(range(u, u + 10))]
    path.write_bytes(("user_id,item_id,rating,timestamp\n" + "\n".join(rows).replace("user0", "usér0")
                      + "\n").encode("latin-1"))
    cli = prepare_cli()
    base = ["--source", "csv", "--path", str(path), "--setting", "as_is", "--no-progress"]
    assert cli.main(base + ["--out", str(tmp_path / "a")]) == 2
    assert "line 2 is not valid utf-8 text" in capsys.readouterr().err
    assert cli.main(base + ["--out", str(tmp_path / "b"), "--encoding", "latin-1"]) == 0
    ids = pq.read_table(tmp_path / "b" / "id_maps" / "users.parquet").column("id").to_pylist()
    assert "usér0" in ids


# ------------------------------------------------------------------ Parquet features: the user's row and key


@pytest.fixture
def inter(tmp_path) -> Path:
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id\nu,B0\nu,B1\nv,B2\n")
    return path


def keyed(tmp_path: Path, **columns) -> tuple[FeatureFile, ...]:
    pq.write_table(pa.table(columns), tmp_path / "f.parquet")
    return (FeatureFile("text", tmp_path / "f.parquet", "sku"),)


def test_nan_in_a_parquet_feature_names_the_file_row_and_key(tmp_path, inter):
    # File rows in another order than our item indices: row 0 = B2, row 1 = X9 (not an item), row 2 = B0, row 3 = B1.
    feats = keyed(tmp_path, sku=["B2", "X9", "B0", "B1"], a=[1.0, 1.0, 1.0, np.nan], b=[0.0, 0.0, 0.0, 0.0])
    src = read_tabular(inter, ColumnMap(), feats)
    with pytest.raises(DataError) as err:
        list(src.features["text"].chunks(10))
    msg = one_line(err)
    assert "feature row 3 (sku 'B1') of modality 'text' holds NaN or inf" in msg, msg
    pq.write_table(pa.table({"sku": ["B2", "B0", "B1"], "v": [[1.0, 2.0], [1.0, 2.0], None]}), tmp_path / "f.parquet")
    with pytest.raises(DataError) as err:
        read_tabular(inter, ColumnMap(), feats)
    assert "column 'v', row 2 (sku 'B1'): no feature vector (null)" in one_line(err)


def test_parquet_feature_lengths_and_duplicates_name_rows_and_keys(tmp_path, inter):
    feats = keyed(tmp_path, sku=["B0", "B1", "B2"], v=[[1.0, 2.0], [1.0, 2.0], [1.0, 2.0, 3.0]])
    with pytest.raises(DataError) as err:
        read_tabular(inter, ColumnMap(), feats)
    assert "column 'v', row 2 (sku 'B2'): 3 values, but row 0 has 2" in one_line(err)
    feats = keyed(tmp_path, sku=["B0", "B1", "B2", "B1"], a=[1.0, 2.0, 3.0, 4.0])
    with pytest.raises(DataError) as err:
        read_tabular(inter, ColumnMap(), feats)
    assert "sku 'B1' has more than one feature row (rows 1 and 3)" in one_line(err)


# ------------------------------------------------------------------ .npy features with more rows than items


def test_npy_with_more_rows_than_items_is_refused(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id\nu,0\nu,1\nv,2\n")
    np.save(tmp_path / "text.npy", np.ones((3, 4), np.float32))
    np.save(tmp_path / "image.npy", np.ones((5, 2), np.float32))
    assert read_tabular(path, features=(FeatureFile("text", tmp_path / "text.npy"),)).n_items == 3
    for order in ((("image", "image.npy"),), (("text", "text.npy"), ("image", "image.npy"))):
        files = tuple(FeatureFile(m, tmp_path / f) for m, f in order)
        with pytest.raises(DataError) as err:
            read_tabular(path, features=files)
        msg = one_line(err)
        assert msg.startswith(f"{tmp_path / 'image.npy'}: 5 feature rows, but the item ids in r.csv stop at 2: "
                              "rows 3..4 would become items nobody interacted with"), msg
