"""benchmarks/batch_quality.py's pure parts: the grid and the table (the runs are full trainings)."""

from __future__ import annotations

import pytest

from benchmarks import batch_quality


def test_grid_runs_the_reference_batch_once():
    cells = batch_quality.grid([256, 1024], ["none", "sqrt", "linear"], reference=256)
    assert cells == [(256, "none"), (1024, "none"), (1024, "sqrt"), (1024, "linear")]


def _row(batch, rule, seed, valid, best_epoch):
    return {"batch": batch, "rule": rule, "seed": seed, "lr": 1e-3, "best_epoch": best_epoch,
            "valid/recall@20": valid, "test/recall@20": valid / 2, "test/ndcg@20": valid / 3,
            "test/recall@10": valid / 4}


def test_table_means_population_std_and_steps_to_best():
    rows = [_row(1024, "sqrt", 1, 0.10, 3), _row(1024, "sqrt", 2, 0.20, 5), _row(256, "none", 1, 0.30, 2)]
    lines = batch_quality.table(rows, n_users=2000).splitlines()
    assert lines[2].startswith("| 256 | none |")  # ordered by G, then rule
    sqrt = lines[3].split(" | ")
    assert sqrt[4] == "0.1500 ± 0.0500"  # valid: mean, population std
    assert sqrt[-2] == "3, 5"
    # 2000 users at G = 1024 is 2 steps an epoch: best epochs 3 and 5 are 6 and 10 steps
    assert sqrt[-1].rstrip(" |") == "8"


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        batch_quality.main(["--data", str(tmp_path / "nope")])
    assert "no manifest.json there; prepare it first" in capsys.readouterr().err
