import json

import pytest
import torch

from ld4mrec_dist.config import Config, config_to_dict
from ld4mrec_dist.train.checkpoint import (
    CheckpointError,
    check_compatible,
    load_checkpoint,
    prune_checkpoints,
    restart_point,
    retention_plan,
    save_checkpoint,
)


def _state():
    return {"model": {"w": torch.arange(4.0)}, "epoch": 3, "manifest_sha256": "abc",
            "config": config_to_dict(Config()), "history": [{"epoch": 1, "loss": 0.5}]}


def test_round_trip_is_safe_and_exact(tmp_path):
    save_checkpoint(tmp_path, _state())
    loaded = load_checkpoint(tmp_path)
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["history"][0]["loss"] == 0.5


def test_corrupt_checkpoint_is_detected(tmp_path):
    save_checkpoint(tmp_path, _state())
    data = bytearray((tmp_path / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "state.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path)


def test_partial_checkpoint_is_detected(tmp_path):
    save_checkpoint(tmp_path, _state())
    (tmp_path / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="partial"):
        load_checkpoint(tmp_path)


def test_unsafe_pickle_is_refused(tmp_path):
    save_checkpoint(tmp_path, {"evil": object.__new__(Config)})  # a class weights_only refuses
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path)


def test_resume_checks_dataset_and_model_config():
    state = _state()
    cfg = config_to_dict(Config())
    check_compatible(state, cfg, "abc")
    with pytest.raises(CheckpointError, match="another dataset"):
        check_compatible(state, cfg, "other")
    changed = json.loads(json.dumps(cfg))
    changed["model"]["hidden"] = 64
    with pytest.raises(CheckpointError, match="'model' differs"):
        check_compatible(state, changed, "abc")
    relaxed = json.loads(json.dumps(cfg))
    relaxed["train"]["epochs"] = 5  # changing the budget is a legitimate resume
    check_compatible(state, relaxed, "abc")


def test_a_checkpoint_older_than_a_new_model_field_resumes_unless_the_field_is_changed():
    cfg = config_to_dict(Config())
    old = json.loads(json.dumps(cfg))
    del old["model"]["svd_solver"]  # written before the field existed: it ran the default
    state = {**_state(), "config": old}
    check_compatible(state, cfg, "abc")
    changed = json.loads(json.dumps(cfg))
    changed["model"]["svd_solver"] = "distributed"
    with pytest.raises(CheckpointError, match="svd_solver"):
        check_compatible(state, changed, "abc")


def _run_with_checkpoints(run_dir, epochs):
    """checkpoint_<i> folders in Ray's naming order, one per epoch given."""
    for i, epoch in enumerate(epochs):
        save_checkpoint(run_dir / f"checkpoint_2026-01-01_00-00-0{i}.000000", {**_state(), "epoch": epoch})


def test_a_restart_takes_the_newest_intact_checkpoint_when_ray_hands_an_older_one(tmp_path):
    _run_with_checkpoints(tmp_path, [1, 2, 3])
    (tmp_path / "checkpoint_2026-01-01_00-00-09.000000").mkdir()  # a partial one, newest by name
    point = restart_point(tmp_path, handed_epoch=1)
    assert point is not None and point.epoch == 3 and point.name.endswith("00-00-02.000000")
    assert restart_point(tmp_path, handed_epoch=3) is None  # Ray's is as new: keep it
    assert restart_point(tmp_path / "nothing", handed_epoch=-1) is None


def test_retention_keeps_the_latest_and_the_best():
    ckpts = [("c1", 1), ("c2", 2), ("c3", 3), ("c4", 4)]
    assert retention_plan(ckpts, best_epoch=2) == ["c1", "c3"]
    assert retention_plan(ckpts, best_epoch=4) == ["c1", "c2", "c3"]
    assert retention_plan(ckpts, best_epoch=9) == ["c1", "c2", "c3"]  # the best's checkpoint is gone
    assert retention_plan([], best_epoch=1) == []


def test_pruning_deletes_only_intact_project_checkpoints(tmp_path):
    _run_with_checkpoints(tmp_path, [1, 2, 3, 4])
    names = sorted(p.name for p in tmp_path.iterdir())
    (tmp_path / names[0] / "notes.txt").write_text("the user's")  # not only our files: kept
    state = tmp_path / names[1] / "state.pt"
    state.write_bytes(state.read_bytes()[:-10])  # corrupt: kept for inspection
    assert prune_checkpoints(tmp_path, best_epoch=4) == [names[2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [names[0], names[1], names[3]]
