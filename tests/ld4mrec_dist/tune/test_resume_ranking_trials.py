"""ld4mrec_dist/tune: the ledger of Tune's state files, the tie rule, a trial's final report."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ld4mrec_dist.config import load_config
from ld4mrec_dist.tune import tune_state
from ld4mrec_dist.tune.heatmap import all_tie_note, grid_matrix
from ld4mrec_dist.tune.ranking import TIE_RULE, best_row, tied_with_best
from ld4mrec_dist.tune.search_space import apply_overrides

METRIC = "valid/recall@20"


# ---------------------------------------------------------------- Tune's state files


def _tune_files(sweep: Path) -> None:
    (sweep / "t_00000").mkdir(parents=True)
    (sweep / "tuner.pkl").write_bytes(b"tuner state")
    (sweep / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (sweep / "t_00000" / "error.pkl").write_bytes(b"error")


def test_recorded_files_verify_and_any_change_or_newcomer_is_named(tmp_path):
    _tune_files(tmp_path)
    tune_state.StateRecorder(tmp_path).record()
    assert set(tune_state.read_ledger(tmp_path)) == {
        "tuner.pkl", "experiment_state-2026-01-01_00-00-00.json", "t_00000/error.pkl"}
    tune_state.verify(tmp_path)  # untouched: accepted

    (tmp_path / "t_00000" / "error.pkl").write_bytes(b"other")
    with pytest.raises(tune_state.UntrustedStateError, match=r"t_00000/error.pkl changed since"):
        tune_state.verify(tmp_path)
    tune_state.StateRecorder(tmp_path).record()  # the sweep itself rewrote it: recorded again
    tune_state.verify(tmp_path)

    (tmp_path / "basic-variant-state-2026-01-01_00-00-01.json").write_text("{}")
    with pytest.raises(tune_state.UntrustedStateError, match=r"basic-variant-state-\S+ is not in the sweep's record"):
        tune_state.verify(tmp_path)


def test_a_sweep_without_a_ledger_is_not_trusted(tmp_path):
    _tune_files(tmp_path)
    with pytest.raises(tune_state.UntrustedStateError, match="tuner.pkl is not in"):
        tune_state.verify(tmp_path)


# ---------------------------------------------------------------- ties


def test_ties_are_broken_by_the_rule_whatever_the_order_of_results():
    rows = [{"trial_id": "s_00003", METRIC: 0.5, "best_epoch": 2},
            {"trial_id": "s_00001", METRIC: 0.5, "best_epoch": 3},
            {"trial_id": "s_00002", METRIC: 0.5, "best_epoch": 2},
            {"trial_id": "s_00000", METRIC: 0.4, "best_epoch": 1}]
    for seed in range(5):
        shuffled = random.Random(seed).sample(rows, len(rows))
        assert best_row(shuffled, METRIC)["trial_id"] == "s_00002"  # earlier epoch, then lower id
        assert [r["trial_id"] for r in tied_with_best(shuffled, METRIC)] == ["s_00002", "s_00003", "s_00001"]
    assert "earlier epoch" in TIE_RULE and "lowest trial id" in TIE_RULE


def test_heatmap_cells_follow_the_tie_rule_and_a_grid_of_ties_says_so():
    rows = [{"trial_id": "b", "x": 1, "y": 1, METRIC: 0.5, "test/recall@20": 0.9, "best_epoch": 2},
            {"trial_id": "a", "x": 1, "y": 1, METRIC: 0.5, "test/recall@20": 0.1, "best_epoch": 2},
            {"trial_id": "c", "x": 2, "y": 1, METRIC: 0.5, "test/recall@20": 0.3, "best_epoch": 1}]
    _, _, test = grid_matrix(rows, "x", "y", "test/recall@20", select=METRIC)
    np.testing.assert_allclose(test, [[0.1, 0.3]])  # cell (1, 1): trial a, whatever the order
    assert all_tie_note(rows, "x", "y", METRIC).startswith("all 2 cells tie at valid/recall@20 0.5000")
    rows[2][METRIC] = 0.6
    assert all_tie_note(rows, "x", "y", METRIC) == ""


# ---------------------------------------------------------------- typos


def test_an_unknown_key_names_the_nearest_one():
    from ld4mrec_dist.config import ConfigError

    with pytest.raises(ConfigError, match="unknown configuration key 'train.epoch'; did you mean train.epochs\\?"):
        apply_overrides(load_config(), {"train.epoch": 3})


# ---------------------------------------------------------------- a trial's last report


def test_a_trial_resumed_at_its_last_checkpoint_reports_its_final_result(tmp_path, monkeypatch):
    """Restored after an interruption that came when its training was over (its checkpoint
    holds the last evaluation), a Ray Train trial trains no epoch: it still reports its
    final result (else Tune keeps whatever it saved before the interruption, or nothing)."""
    import ray.tune
    import ray.tune.integration.ray_train

    from ld4mrec_dist.train import checkpoint, launch, trainer
    from ld4mrec_dist.tune import sweep

    reports: list[dict] = []
    run_dir = tmp_path / "runs" / "t_00000"
    final = {"best_epoch": 3, "epochs_run": 3, "valid": {"recall@20": 0.5}, "test": {"recall@20": 0.4}}
    monkeypatch.setattr(ray.tune, "report", reports.append)
    monkeypatch.setattr(ray.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t_00000"))
    monkeypatch.setattr(ray.tune.integration.ray_train, "TuneReportCallback", lambda: None)
    monkeypatch.setattr(sweep, "trial_config", lambda params, d, t: load_config(
        overrides=[f"run.storage={tmp_path / 'runs'}", "run.name=t_00000", "scaling.num_workers=1"]))
    monkeypatch.setattr(checkpoint, "latest_checkpoint_dir", lambda d: run_dir / "checkpoint_000002")
    monkeypatch.setattr(trainer, "prepare_run", lambda cfg: SimpleNamespace(run_dir=run_dir, worker=None))
    monkeypatch.setattr(launch, "make_torch_trainer", lambda *a, **k: SimpleNamespace())
    monkeypatch.setattr(launch, "fit", lambda t: {})  # Ray Train resumed: no epoch left, no report
    monkeypatch.setattr(trainer, "finish_run", lambda cfg, d, out, wall: (
        d.mkdir(parents=True, exist_ok=True), (d / "final_metrics.json").write_text(json.dumps(final))))
    sweep.run_trial({}, tmp_path, stall_timeout_s=5)
    assert reports == [{"epoch": 3, "best_epoch": 3, METRIC: 0.5, "test/recall@20": 0.4}]


def test_a_stopped_in_process_trial_ends_its_training_thread_before_returning(tmp_path, monkeypatch):
    """ASHA stops a trial: Tune's report raises SystemExit in the trial's thread. The loop's
    thread must be over before the trial returns (left running, it is torn down inside a
    torch call when the actor's interpreter exits: `Fatal Python error: Aborted`)."""
    import threading
    import time

    import ray.tune

    from ld4mrec_dist.train import loop
    from ld4mrec_dist.tune import sweep

    def endless_loop(config):  # one evaluation written, then training that never ends
        (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, METRIC: 0.1}) + "\n")
        while True:
            time.sleep(0.01)

    def stop(row):
        raise SystemExit(0)  # what Tune's report does once the trial is stopped

    monkeypatch.setattr(loop, "train_loop_per_worker", endless_loop)
    monkeypatch.setattr(ray.tune, "report", stop)
    with pytest.raises(SystemExit):
        sweep.train_in_process({}, tmp_path, poll_s=0.01)
    assert not [t for t in threading.enumerate() if t.name == "ld4mrec-in-process-trial"]


def test_tune_keeps_its_restore_hint_and_info_lines_to_itself():
    """Tune's `Resume experiment with: Tuner.restore(...)` would contradict the sweep's own
    `--resume` command (which also checks Tune's files before they are unpickled)."""
    import logging

    from ld4mrec_dist.tune.sweep import quiet_tune

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    tune_logger = logging.getLogger("ray.tune.tune")
    handler = Keep()
    tune_logger.addHandler(handler)
    try:
        quiet_tune()
        tune_logger.warning("Experiment has been interrupted, but the most recent state was saved.\n"
                            'Resume experiment with: Tuner.restore(path="/x", trainable=...)')
        tune_logger.info("Wrote the latest version of all result files and experiment state to '/x'")
        tune_logger.warning("Trials did not complete: [t_00001]")
    finally:
        tune_logger.removeHandler(handler)
    assert seen == ["Trials did not complete: [t_00001]"]
