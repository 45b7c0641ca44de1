"""jobs/compare.py as a user calls it: library baselines beside LD4MRec on tiny data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _job():
    spec = importlib.util.spec_from_file_location("job_compare", REPO / "jobs" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _paths(tmp_path: Path) -> list[str]:
    return [f"data.root={tmp_path / 'data'}", f"run.storage={tmp_path / 'runs'}"]


def test_plan_reads_overrides_after_a_list_flag_and_baselines_only_runs_no_variant():
    job = _job()
    variants, baselines, seeds, overrides = job.plan(job.parse_args(
        ["--baselines", "ease", "bpr", "--seeds", "1", "2", "data.setting=noisy", "--baselines-only"]))
    assert (variants, baselines, seeds, overrides) == ([], ["ease", "bpr"], [1, 2], ["data.setting=noisy"])
    variants, baselines, _, _ = job.plan(job.parse_args(["--variants"]))
    assert (variants, baselines) == ([], [])
    variants, _, _, _ = job.plan(job.parse_args([]))
    assert variants == ["none", "no_bg", "no_bd", "no_sr"]


def test_quick_is_one_seed_short_training_and_small_grids_and_user_overrides_win():
    job = _job()
    variants, baselines, seeds, overrides = job.plan(job.parse_args(
        ["--quick", "--seeds", "7", "8", "train.patience=3"]))
    assert seeds == [7] and variants == job.QUICK_VARIANTS and baselines == job.QUICK_BASELINES
    assert overrides[:len(job.QUICK)] == job.QUICK and overrides[-1] == "train.patience=3"


def test_baselines_only_writes_table_with_time_and_chosen_settings_and_json(tmp_path):
    pytest.importorskip("cornac")
    out = tmp_path / "cmp.md"
    code = _job().main(["--smoke-test", "--baselines-only", "--baselines", "mostpop", "ease", "bpr",
                        "--seeds", "1", "2", "--quick", "--out", str(out), *_paths(tmp_path)])
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines[0].endswith("| time (s) | settings |")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["MostPop (cornac)", "EASE (cornac)",
                                                                  "BPR-MF (cornac)"]
    rows = {r["model"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    ease = rows["EASE (cornac)"]
    assert ease["runs"] == 1 and ease["seeds"] == []  # deterministic: one run whatever the seeds
    assert ease["chosen"]["lamb"] in (250, 500, 1000) and len(ease["grid"]) == 3
    assert ease["chosen"]["lamb"] == max(ease["grid"], key=lambda g: g["valid"]["recall@20"])["params"]["lamb"]
    assert "lamb=" in lines[3]
    bpr = rows["BPR-MF (cornac)"]
    assert bpr["runs"] == 1 and bpr["seeds"] == [1]  # --quick keeps the first seed
    assert all(0.0 <= r["test"]["recall@20"] <= 1.0 and r["time_s"] >= 0.0 for r in rows.values())


@pytest.mark.slow
def test_baselines_and_a_variant_side_by_side_with_spread_over_seeds(tmp_path):
    pytest.importorskip("cornac")
    out = tmp_path / "cmp.md"
    code = _job().main(["--smoke-test", "--baselines", "ease", "als", "--variants", "none", "--seeds", "1", "2",
                        "--out", str(out), *_paths(tmp_path)])
    assert code == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["model"] for r in rows] == ["most-popular", "EASE (cornac)", "ALS (implicit)", "LD4MRec"]
    assert rows[2]["runs"] == 2 and rows[3]["runs"] == 2
    assert " ± " in out.read_text().splitlines()[4]  # ALS: two seeds


def test_missing_extra_is_a_one_line_cli_error_before_any_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cornac", None)  # as if the extra were not installed
    code = _job().main(["--smoke-test", "--baselines", "ease", "--variants", "none", *_paths(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: baseline 'ease' needs the cornac library (cornac is not installed): " \
                  'pip install -e ".[baselines]"'
    assert not (tmp_path / "runs").exists()  # failed before training


def test_unknown_baseline_and_empty_baselines_only_are_cli_errors(tmp_path, capsys):
    assert _job().main(["--smoke-test", "--baselines", "lightgcn", *_paths(tmp_path)]) == 2
    assert "lightgcn" in capsys.readouterr().err
    assert _job().main(["--baselines-only", *_paths(tmp_path)]) == 2
    assert "--baselines-only needs --baselines" in capsys.readouterr().err


def test_help_shows_the_quick_settings_as_numbers(capsys):
    job = _job()
    with pytest.raises(SystemExit):
        job.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "QUICK_" not in text and "{quick" not in text
    assert f"at most {job.QUICK_EPOCHS} epochs and patience\n{job.QUICK_PATIENCE}" in text


def test_a_run_stopped_by_its_epoch_cap_while_improving_is_marked(monkeypatch):
    from ld4mrec_dist import compare
    from ld4mrec_dist.config import load_config
    from ld4mrec_dist.train.trainer import TrainingResult

    finished = {1: (15, 15), 2: (6, 9)}  # seed -> (best epoch, epochs run): seed 1 hit the cap of 15

    def fake_run(cfg):
        best, run = finished[cfg.train.seed]
        metrics = {"recall@20": 0.1, "ndcg@20": 0.05}
        return TrainingResult("runs/x", best, metrics, metrics, run, 1.0, [])

    monkeypatch.setattr(compare, "run_training", fake_run)
    base = load_config(None, ["train.epochs=15", "eval.ks=[20]"])
    row = compare.ld4mrec_row(base, "none", [1, 2], "stamp")
    table = compare.markdown_table([row], [20])
    assert "best epoch 15 of 15" in table and "raise train.epochs" in table
    assert "best epoch 6 of 9" not in table  # stopped early by patience: nothing to say
    finished[1] = (10, 15)
    assert "epoch cap" not in compare.markdown_table([compare.ld4mrec_row(base, "none", [1], "s")], [20])
