"""Start-up lines and progress inside an epoch (what rank 0 prints besides its epoch lines)."""

from __future__ import annotations

from ld4mrec_dist import console, tracking
from ld4mrec_dist.config import load_config


def test_config_line_names_exactly_the_values_that_differ_from_the_defaults():
    assert "the defaults" in console.config_line(load_config())
    line = console.config_line(load_config(None, ["train.lr=0.0005", "eval.ks=[5,20]", "train.epochs=1000"]))
    assert line.endswith("changed from the defaults: train.lr=0.0005 eval.ks=[5, 20]")


def test_progress_prints_a_line_per_quarter_of_a_long_epoch_when_redirected(monkeypatch, capsys):
    monkeypatch.setattr(console, "LINES_AFTER_S", 0.0)  # every epoch counts as long
    progress = console.EpochProgress(epoch=0, total=8, mode=console.LINES, enabled=True, in_ray_worker=False)
    for _ in range(8):
        progress.update()
    progress.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].split()[0] for line in lines] == ["2/8", "4/8", "6/8"]
    assert all(line.startswith("[ld4mrec] epoch 1:") for line in lines)


def test_progress_stays_silent_in_a_short_epoch_and_on_other_ranks(capsys):
    for enabled in (True, False):
        progress = console.EpochProgress(epoch=0, total=4, mode=console.LINES, enabled=enabled, in_ray_worker=False)
        for _ in range(4):
            progress.update()
    assert capsys.readouterr().out == ""


def test_a_run_without_tensorboard_says_so_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(tracking, "tensorboard_available", lambda: False)
    assert "tensorboard package is not installed" in tracking.startup_line(tmp_path / "r")
    tracker = tracking.Tracker(tmp_path / "r", enabled=True)
    tracker.step(1, 0.5, 1e-3, 0.01)  # a no-op, not an error
    tracker.close()
    assert not (tmp_path / "r").exists()
