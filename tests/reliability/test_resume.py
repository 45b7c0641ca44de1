"""Every resume path leads somewhere: a corrupt, partial or deleted newest checkpoint is
passed over (and named) for the newest intact one, `--from-checkpoint NAME` picks one,
and Ray Train's run snapshot is made to agree, so it no longer refuses to start
(CheckpointManagerInitializationError) or hands the workers a checkpoint they cannot load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ld4mrec_dist.config import Config, config_to_dict, load_config
from ld4mrec_dist.train.checkpoint import (
    RAY_SNAPSHOT_FILE,
    CheckpointError,
    choose_resume_checkpoint,
    point_ray_snapshot_at,
    save_checkpoint,
)
from ld4mrec_dist.train.trainer import run_training


def _entry(name: str, epoch: int) -> dict:
    return {"version": 0, "checkpoint_dir_name": name, "metrics": {"epoch": epoch}}


def _fake_run(run_dir: Path, epochs: list[int]) -> list[str]:
    """Checkpoints for `epochs` (oldest first) and a Ray snapshot listing them all."""
    names = []
    for epoch in epochs:
        name = f"checkpoint_2026-01-01_00-00-{epoch:02d}.000000"
        save_checkpoint(run_dir / name, {"epoch": epoch, "w": torch.ones(3) * epoch,
                                         "config": config_to_dict(Config()), "manifest_sha256": "m"})
        names.append(name)
    entries = [_entry(n, e) for n, e in zip(names, epochs, strict=True)]
    snapshot = {"ray_version": "2.60.0", "checkpoint_results": entries,
                "checkpoint_report_indices": list(range(len(names))), "latest_checkpoint_result": entries[-1],
                "pending_training_results": [], "pending_validation_specs": [], "current_report_index": len(names),
                "validated_checkpoint_dir_names": [], "timed_out_validation_checkpoint_dir_names": [],
                "failed_validation_checkpoint_dir_names": []}
    (run_dir / RAY_SNAPSHOT_FILE).write_text(json.dumps(snapshot))
    return names


def _snapshot(run_dir: Path) -> dict:
    return json.loads((run_dir / RAY_SNAPSHOT_FILE).read_text())


@pytest.mark.parametrize("damage", ["corrupt", "no_meta", "deleted"])
def test_newest_damaged_checkpoint_is_passed_over_for_the_newest_intact(tmp_path, damage):
    old, mid, new = _fake_run(tmp_path, [1, 2, 3])
    if damage == "corrupt":
        data = bytearray((tmp_path / new / "state.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (tmp_path / new / "state.pt").write_bytes(bytes(data))
    elif damage == "no_meta":
        (tmp_path / new / "meta.json").unlink()
    else:
        shutil.rmtree(tmp_path / new)  # what the old advice told users to do
    point = choose_resume_checkpoint(tmp_path)
    assert (point.name, point.epoch) == (mid, 2)
    assert [n for n, _ in point.skipped] == ([] if damage == "deleted" else [new])
    assert point_ray_snapshot_at(tmp_path, point)
    snap = _snapshot(tmp_path)
    # Ray's snapshot now names only checkpoints that exist, the chosen one as the latest.
    assert [r["checkpoint_dir_name"] for r in snap["checkpoint_results"]] == [old, mid]
    assert snap["latest_checkpoint_result"]["checkpoint_dir_name"] == mid
    assert not (tmp_path / new).exists()
    if damage != "deleted":
        assert (tmp_path / f"skipped_{new}").is_dir()  # kept for inspection, out of the way


def test_from_checkpoint_picks_an_older_one_and_sets_newer_aside(tmp_path):
    old, mid, new = _fake_run(tmp_path, [1, 2, 3])
    point = choose_resume_checkpoint(tmp_path, old)
    assert point.name == old and [n for n, _ in point.skipped] == [new, mid]
    point_ray_snapshot_at(tmp_path, point)
    assert [r["checkpoint_dir_name"] for r in _snapshot(tmp_path)["checkpoint_results"]] == [old]
    assert choose_resume_checkpoint(tmp_path).name == old  # a later plain --resume agrees


def test_from_checkpoint_errors_name_the_choices(tmp_path):
    old, _, new = _fake_run(tmp_path, [1, 2, 3])
    with pytest.raises(CheckpointError, match=f"no such checkpoint.*{old}"):
        choose_resume_checkpoint(tmp_path, "checkpoint_typo")
    (tmp_path / new / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="partial"):
        choose_resume_checkpoint(tmp_path, new)


def test_no_intact_checkpoint_says_so(tmp_path):
    (only,) = _fake_run(tmp_path, [1])
    (tmp_path / only / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="no intact checkpoint left.*partial.*start a new run"):
        choose_resume_checkpoint(tmp_path)


def test_from_checkpoint_needs_resume(job, capsys):
    assert job("train").main(["--from-checkpoint", "checkpoint_x"]) == 2
    assert "--from-checkpoint NAME needs --resume RUN_DIR" in capsys.readouterr().err


def test_resume_of_a_mistyped_run_dir(job, tmp_path, capsys):
    assert job("train").main(["--resume", str(tmp_path / "no-such-run")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_resume_of_an_in_process_run_says_it_has_no_checkpoints(job, tiny_settings, tmp_path, capsys):
    common = [*tiny_settings, "data.synthetic=tiny", "train.epochs=1", "scaling.num_workers=0",
              f"data.root={tmp_path / 'data'}"]
    assert job("train").main([*common, f"run.storage={tmp_path / 'runs'}", "run.name=r"]) == 0
    capsys.readouterr()
    assert job("train").main(["--resume", str(tmp_path / "runs" / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in-process runs do not checkpoint" in err


@pytest.mark.slow
def test_resume_after_newest_checkpoint_deleted_or_partial(tiny_settings, tiny_data, ray_local, tmp_path_factory):
    """A real run; then two newer checkpoints in Ray's snapshot: one deleted by the user,
    one without meta.json (the newest). Resume must start from the real one, up front."""
    root = tmp_path_factory.mktemp("resume")
    base = [f"data.path={tiny_data}", f"run.storage={root / 'runs'}", "run.name=r", *tiny_settings,
            "scaling.num_workers=1"]
    first = run_training(load_config(overrides=[*base, "train.epochs=2"]))
    run_dir = Path(first.run_dir)
    snap = _snapshot(run_dir)
    real = snap["latest_checkpoint_result"]["checkpoint_dir_name"]
    deleted, partial = "checkpoint_2099-01-01_00-00-00.000001", "checkpoint_2099-01-01_00-00-00.000002"
    shutil.copytree(run_dir / real, run_dir / partial)
    (run_dir / partial / "meta.json").unlink()
    top = max(snap["checkpoint_report_indices"])
    for offset, name in enumerate((deleted, partial), start=1):
        snap["checkpoint_results"].append({**snap["latest_checkpoint_result"], "checkpoint_dir_name": name})
        snap["checkpoint_report_indices"].append(top + offset)
    snap["latest_checkpoint_result"] = snap["checkpoint_results"][-1]
    (run_dir / RAY_SNAPSHOT_FILE).write_text(json.dumps(snap))

    resumed = run_training(load_config(overrides=[*base, "train.epochs=3", f"run.resume={run_dir}"]))
    assert resumed.epochs_run == 3
    rows = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3]  # continued from epoch 2, not from scratch
    assert (run_dir / f"skipped_{partial}").is_dir() and not (run_dir / partial).exists()
