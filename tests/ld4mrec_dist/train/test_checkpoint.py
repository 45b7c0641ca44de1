import json

import pytest
import torch

from ld4mrec_dist.config import Config, config_to_dict
from ld4mrec_dist.train.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint


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
