"""`--overwrite` replaces only a dataset the project wrote: never the input, a folder of
unknown files, or a dataset someone put other files into."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_pipeline.errors import DataError
from data_pipeline.out_dir import check_replaceable
from data_pipeline.prepare import prepare_dataset
from data_pipeline.readers.tabular import read_tabular


@pytest.fixture
def inp(tmp_path) -> Path:
    """A folder holding a CSV of interactions and someone's notes."""
    folder = tmp_path / "inp"
    folder.mkdir()
    rows = [f"{u},{i},5,{u * 10 + i}" for u in range(8) for i in range(u % 3, u % 3 + 4)]
    (folder / "base.csv").write_text("user_id,item_id,rating,timestamp\n" + "\n".join(rows) + "\n")
    (folder / "IMPORTANT_notes.txt").write_text("do not delete")
    return folder


def prepare_cli(job, *args: str) -> int:
    return job("prepare").main(["--source", "csv", "--no-progress", *args])


def test_out_holding_the_input_is_refused_and_nothing_is_deleted(job, inp, capsys):
    code = prepare_cli(job, "--path", str(inp / "base.csv"), "--out", str(inp), "--overwrite")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"--out {inp} holds the input {inp / 'base.csv'}" in err and "another --out" in err
    assert (inp / "base.csv").is_file() and (inp / "IMPORTANT_notes.txt").read_text() == "do not delete"


def test_out_that_is_not_a_dataset_is_refused(job, inp, tmp_path, capsys):
    other = tmp_path / "home"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    assert prepare_cli(job, "--path", str(inp / "base.csv"), "--out", str(other), "--overwrite") == 2
    err = capsys.readouterr().err
    assert "is not a prepared dataset (no manifest.json; it holds e.g. thesis.tex)" in err
    assert (other / "thesis.tex").read_text() == "years of work"


def test_a_dataset_is_replaced_but_not_one_with_extra_files(job, inp, tmp_path, capsys):
    out = tmp_path / "ds"
    assert prepare_cli(job, "--path", str(inp / "base.csv"), "--out", str(out)) == 0
    assert prepare_cli(job, "--path", str(inp / "base.csv"), "--out", str(out), "--overwrite") == 0  # ours: replaced
    (out / "train" / "my_analysis.ipynb").write_text("{}")
    capsys.readouterr()
    assert prepare_cli(job, "--path", str(inp / "base.csv"), "--out", str(out), "--overwrite") == 2
    err = capsys.readouterr().err
    assert "holds train/my_analysis.ipynb, which is not part of the dataset its manifest.json lists" in err
    assert (out / "train" / "my_analysis.ipynb").is_file()


def test_the_rule_also_guards_the_python_api(inp):
    """prepare_dataset(…, overwrite=True) itself refuses, whatever calls it."""
    source = read_tabular(inp / "base.csv")
    with pytest.raises(DataError, match="holds the input"):
        prepare_dataset(source, "clean", inp, overwrite=True, progress=False)
    assert (inp / "base.csv").is_file()


def test_absent_empty_and_file_targets(tmp_path):
    check_replaceable(tmp_path / "new")  # absent: fine
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")  # empty: fine
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file, not a dataset directory"):
        check_replaceable(tmp_path / "f")
    bad = tmp_path / "fake"
    shutil.copytree(tmp_path / "empty", bad)
    (bad / "manifest.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="is not one that jobs/prepare.py writes"):
        check_replaceable(bad)
