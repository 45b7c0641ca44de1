"""ld4mrec_dist/tune: sweep files, search spaces, best-trial selection, heatmaps, summaries, ASHA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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

REPO = Path(__file__).resolve().parents[3]
SWEEPS = REPO / "jobs" / "configs" / "sweeps"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    ({"grid": {"diffusion.sr_prb": [0.1]}}, "unknown configuration key .diffusion.sr_prb.; did you mean"),
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
