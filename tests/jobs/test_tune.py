"""Sweeps: sweep files, search spaces, outputs; a 4-trial Ray Tune sweep end to end."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

from ld4mrec_dist.config import ConfigError, load_config
from ld4mrec_dist.tune.heatmap import blank_notes, grid_matrix, plot_grid_heatmap
from ld4mrec_dist.tune.search_space import (
    apply_overrides,
    base_config,
    check_space_values,
    load_sweep,
    param_space,
    sweep_from_dict,
)
from ld4mrec_dist.tune.sweep import best_row

REPO = Path(__file__).resolve().parents[2]
SWEEPS = REPO / "jobs" / "configs" / "sweeps"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"jobs_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,keys", [
    ("sr_grid", ["diffusion.sr_prob", "diffusion.sr_gamma"]),
    ("schedule_grid", ["diffusion.noise_scale", "diffusion.alpha_min"]),
    ("free", ["diffusion.steps", "model.hidden", "model.svd_rank", "train.lr", "train.batch_size"]),
])
def test_shipped_sweeps_are_valid(name, keys):
    spec = load_sweep(SWEEPS / f"{name}.yaml")
    assert spec.keys == keys and spec.metric == "valid/recall@20" and spec.asha.enabled
    base = base_config(spec, ["train.epochs=7"])
    check_space_values(spec, base)  # every value makes a valid typed Config
    assert base.train.epochs == 7 and base.scaling.num_workers == spec.workers_per_trial
    assert set(param_space(spec)) == set(keys)


@pytest.mark.parametrize("raw,match", [
    ({"grid": {"diffusion.sr_prob": [0.1]}, "metric": "test/recall@20"}, "never on test"),
    ({"grid": {"diffusion.sr_prb": [0.1]}}, "not a config field"),
    ({"grid": {"diffusion.sr_prob": [2.0]}}, "must be in"),
    ({"grid": {"run.name": ["x"]}}, "set by the sweep"),
    ({"space": {"train.lr": {"lognormal": [1, 2]}}}, "one of"),
    ({"grid": {"train.lr": [0.1]}, "asha": {"grace": 3}}, "unknown asha"),
    ({"grid": {"train.lr": [0.1]}, "sampels": 3}, "unknown key"),
    ({}, "nothing to sweep"),
])
def test_bad_sweeps_fail_before_any_trial(raw, match):
    with pytest.raises(ConfigError, match=match):
        spec = sweep_from_dict(raw)
        check_space_values(spec, base_config(spec))


def test_command_line_cannot_set_what_the_sweep_sets():
    spec = load_sweep(SWEEPS / "sr_grid.yaml")
    with pytest.raises(ConfigError, match="set by the sweep"):
        base_config(spec, ["run.storage=/elsewhere"])
    assert base_config(spec, ["train.lr=0.002"]).train.lr == 0.002


def test_overrides_are_typed_and_accept_numpy_scalars():
    cfg = apply_overrides(load_config(), {"train.lr": np.float64(0.002), "model.hidden": np.int64(64)})
    assert cfg.train.lr == 0.002 and cfg.model.hidden == 64 and type(cfg.model.hidden) is int
    with pytest.raises(ConfigError):
        apply_overrides(load_config(), {"model.hidden": 33})  # C-Net needs an even width


def test_best_is_selected_on_valid_not_test():
    rows = [{"trial_id": "a", "valid/recall@20": 0.2, "test/recall@20": 0.1},
            {"trial_id": "b", "valid/recall@20": 0.1, "test/recall@20": 0.9},
            {"trial_id": "c", "valid/recall@20": float("nan")}]
    assert best_row(rows, "valid/recall@20")["trial_id"] == "a"


def test_heatmap_cells_show_the_best_completed_trial_never_an_average(tmp_path):
    rows = [{"x": 1, "y": 10, "outcome": "completed", "valid/recall@20": 0.1, "test/recall@20": 0.9},
            {"x": 1, "y": 10, "outcome": "completed", "valid/recall@20": 0.3, "test/recall@20": 0.4},
            {"x": 1, "y": 10, "outcome": "stopped_by_asha", "valid/recall@20": 0.8, "test/recall@20": 0.8},
            {"x": 2, "y": 10, "outcome": "completed", "valid/recall@20": 0.5, "test/recall@20": 0.6},
            {"x": 1, "y": 20, "outcome": "stopped_by_asha", "valid/recall@20": 0.7, "test/recall@20": 0.7},
            {"x": 2, "y": 20, "outcome": "error", "valid/recall@20": float("nan")}]
    xs, ys, m = grid_matrix(rows, "x", "y", "valid/recall@20")
    assert xs == [1, 2] and ys == [10, 20]
    np.testing.assert_allclose(m[0], [0.3, 0.5])  # best completed of (0.1, 0.3); ASHA's 0.8 left out
    assert np.isnan(m[1]).all()  # no completed trial: blank
    # the test panel shows the test metric of the trial chosen on valid, not the best test
    _, _, t = grid_matrix(rows, "x", "y", "test/recall@20", select="valid/recall@20")
    np.testing.assert_allclose(t[0], [0.4, 0.6])
    assert blank_notes(rows, "x", "y", xs, ys)[1] == ["ASHA", "error"]
    png = plot_grid_heatmap(rows, "x", "y", "valid/recall@20", tmp_path / "h.png")
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_blank_cells_of_stopped_trials_say_where_and_how_far_they_got():
    """An ASHA-stopped trial never colours a cell; its blank cell notes the stop epoch and
    the panel's value at its best-so-far epoch (chosen on valid, as the coloured cells)."""
    rows = [{"x": 1, "y": 10, "outcome": "stopped_by_asha", "stopped_at_epoch": 8,
             "valid/recall@20": 0.1452, "test/recall@20": 0.1075},
            {"x": 1, "y": 10, "outcome": "stopped_by_asha", "stopped_at_epoch": 16,
             "valid/recall@20": 0.1547, "test/recall@20": 0.1005},
            {"x": 2, "y": 10, "outcome": "completed", "valid/recall@20": 0.1597, "test/recall@20": 0.1136},
            {"x": 2, "y": 20, "outcome": "error", "valid/recall@20": float("nan")},
            {"x": 1, "y": 20, "outcome": "stopped_by_asha", "valid/recall@20": float("nan")}]
    xs, ys, m = grid_matrix(rows, "x", "y", "valid/recall@20")
    assert np.isnan(m[0, 0]) and m[0, 1] == 0.1597 and np.isnan(m[1]).all()
    valid = blank_notes(rows, "x", "y", xs, ys, value="valid/recall@20")
    assert valid == [["ASHA @16: 0.1547", ""], ["ASHA", "error"]]
    test = blank_notes(rows, "x", "y", xs, ys, value="test/recall@20", select="valid/recall@20")
    assert test[0][0] == "ASHA @16: 0.1005"  # the trial best on valid, not the best test


def test_summary_prints_swept_floats_in_full():
    from ld4mrec_dist.tune.sweep import swept_value

    assert swept_value(1e-05) == "1e-05" and swept_value(0.00025) == "0.00025"
    assert swept_value(256) == 256 and swept_value("l2") == "l2"


@pytest.mark.slow
@pytest.mark.timeout(1500)  # ~4 min on an idle 2-core host; far more on a loaded CI machine
def test_four_trial_sweep_end_to_end(ray_local, tmp_path, monkeypatch):
    """2 × 2 grid over (p, γ) on tiny data, 1 worker per trial, ASHA on: CSV, heatmap,
    best config that jobs/train.py runs unchanged, and Tune's restore of the finished sweep."""
    sweep_file = tmp_path / "sr_tiny.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "sr_tiny",
        "overrides": {"data.synthetic": "tiny", "data.root": str(tmp_path / "data"), "train.epochs": 3,
                      "train.batch_size": 32, "model.hidden": 32, "model.svd_rank": 8,
                      "scaling.cpus_per_worker": 0.25, "scaling.max_failures": 0},
        "grid": {"diffusion.sr_prob": [0.01, 0.2], "diffusion.sr_gamma": [0.01, 0.2]},
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "workers_per_trial": 1,
    }, sort_keys=False))
    from ld4mrec_dist.tune.guard import orphaned_placement_groups

    groups_before = {pg.placement_group_id.hex() for pg in orphaned_placement_groups(all_actor_groups=True)}
    tune_job = load_job("tune")
    storage = tmp_path / "sweeps"
    assert tune_job.main(["--sweep", str(sweep_file), "--storage", str(storage), "--name", "s"]) == 0
    sweep_dir = storage / "s"

    with open(sweep_dir / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {(float(r["diffusion.sr_prob"]), float(r["diffusion.sr_gamma"])) for r in rows} == \
        {(0.01, 0.01), (0.01, 0.2), (0.2, 0.01), (0.2, 0.2)}
    for r in rows:
        assert r["outcome"] in ("completed", "stopped_by_asha"), r
        assert (r.get("stopped_at_epoch", "") != "") == (r["outcome"] == "stopped_by_asha"), r
        assert 1 <= int(r["epochs"]) <= 3 and 1 <= int(r["best_epoch"]) <= int(r["epochs"])
        assert 0.0 <= float(r["valid/recall@20"]) <= 1.0 and 0.0 <= float(r["test/recall@20"]) <= 1.0
        assert float(r["time_s"]) > 0 and Path(r["run_dir"], "metrics.jsonl").is_file()
    assert any(r["outcome"] == "completed" for r in rows)

    png = sweep_dir / "heatmap_sr_prob_sr_gamma.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000

    # no placement group of a stopped trial outlives the sweep (Ray Train's own cleaner
    # cannot remove them here: this Ray instance has no dashboard for its State API)
    left = {pg.placement_group_id.hex() for pg in orphaned_placement_groups(all_actor_groups=True)}
    assert left <= groups_before, "placement groups of this sweep's trials outlived it"

    best = max((r for r in rows if r["outcome"] == "completed"), key=lambda r: float(r["valid/recall@20"]))
    best_cfg = load_config(sweep_dir / "best_config.yaml")
    assert best_cfg.diffusion.sr_prob == float(best["diffusion.sr_prob"])
    assert best_cfg.diffusion.sr_gamma == float(best["diffusion.sr_gamma"])
    assert best_cfg.data.synthetic == "tiny" and best_cfg.model.hidden == 32 and best_cfg.run.name == ""
    # the trial's own saved config is the best config but for its run directory
    trial_cfg = load_config(Path(best["run_dir"]) / "config.yaml")
    assert trial_cfg.diffusion == best_cfg.diffusion and trial_cfg.model == best_cfg.model

    # Tune's restore of the (finished) sweep: nothing reruns, the outputs are rebuilt
    (sweep_dir / "trials.csv").unlink()
    assert tune_job.main(["--resume", str(sweep_dir)]) == 0
    with open(sweep_dir / "trials.csv") as f:
        assert sorted(r["trial_id"] for r in csv.DictReader(f)) == sorted(r["trial_id"] for r in rows)

    # jobs/train.py takes the best config unchanged (in-process, 0 workers, for time)
    monkeypatch.chdir(tmp_path)
    assert load_job("train").main(["--config", str(sweep_dir / "best_config.yaml"),
                                   "scaling.num_workers=0"]) == 0
    assert len(list((tmp_path / "runs").glob("*/final_metrics.json"))) == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_in_process_trials_report_to_asha(ray_local, tmp_path):
    """workers_per_trial: 0 trains each trial in its Tune actor (no Ray Train): every
    evaluation still reaches Tune and ASHA, outcomes and the best config as with workers."""
    sweep_file = tmp_path / "inproc.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "inproc",
        "overrides": {"data.synthetic": "tiny", "data.root": str(tmp_path / "data"), "train.epochs": 4,
                      "train.batch_size": 32, "model.hidden": 32, "model.svd_rank": 8,
                      "scaling.cpus_per_worker": 0.5},
        "grid": {"diffusion.sr_prob": [0.01, 0.2], "diffusion.sr_gamma": [0.01, 0.2]},
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "workers_per_trial": 0,
    }, sort_keys=False))
    storage = tmp_path / "sweeps"
    assert load_job("tune").main(["--sweep", str(sweep_file), "--storage", str(storage), "--name", "s"]) == 0
    with open(storage / "s" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["outcome"] for r in rows} <= {"completed", "stopped_by_asha"}, rows
    completed = [r for r in rows if r["outcome"] == "completed"]
    assert completed and all(int(r["epochs"]) == 4 for r in completed)
    for r in rows:
        assert 0.0 <= float(r["valid/recall@20"]) <= 1.0
        if r["outcome"] == "stopped_by_asha":  # stopped where ASHA saw its report, before the end
            assert 1 <= int(r["stopped_at_epoch"]) < 4
    assert load_config(storage / "s" / "best_config.yaml").scaling.num_workers == 0

@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_file_is_valid(path):
    """Each sweep file in jobs/configs/sweeps/ loads, selects on valid, and every value of
    its grid and space makes a valid typed config (checked before any trial would start)."""
    spec = load_sweep(path)
    assert spec.metric.startswith("valid/") and spec.keys
    check_space_values(spec, base_config(spec))


def test_asha_ranks_trials_by_their_best_valid_so_far(tmp_path):
    """A trial that peaked early and declined is not stopped for its decline: at the rung
    it counts with its best value, the value it would be selected by."""
    from types import SimpleNamespace

    from ld4mrec_dist.tune import ledger
    from ld4mrec_dist.tune.guard import RecordingASHA

    asha = RecordingASHA(tmp_path, time_attr="epoch", metric="valid/recall@20", mode="max", max_t=100,
                         grace_period=2, reduction_factor=2, brackets=1)
    first, peaked, weak = (SimpleNamespace(trial_id=t) for t in ("first", "peaked", "weak"))
    for trial in (first, peaked, weak):
        asha.on_trial_add(None, trial)

    def report(trial, epoch, value):
        return asha.on_trial_result(None, trial, {"epoch": epoch, "valid/recall@20": value})

    assert report(first, 1, 0.10) == report(first, 2, 0.20) == "CONTINUE"  # rung 2 records 0.20
    assert report(peaked, 1, 0.25) == "CONTINUE"
    assert report(peaked, 2, 0.15) == "CONTINUE"  # 0.15 now, 0.25 at its best: kept
    assert report(weak, 1, 0.12) == "CONTINUE"
    assert report(weak, 2, 0.11) == "STOP"  # its best, 0.12, is below the rung's cutoff
    events = ledger.read_events(tmp_path)
    assert list(events) == ["weak"] and events["weak"][0]["epoch"] == 2
