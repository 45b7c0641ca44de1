"""A worker dies mid-run, and --resume by hand: both replay the uninterrupted 2-worker run
bitwise; resume refuses another dataset and passes over a corrupt checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest

from ld4mrec_dist.train.checkpoint import (
    CheckpointError,
    checkpoint_names,
    choose_resume_checkpoint,
    latest_checkpoint_dir,
)
from ld4mrec_dist.train.trainer import run_training

from .conftest import TINY_MODEL, make_config

pytestmark = pytest.mark.slow


def _epochs(run_dir):
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_worker_death_and_explicit_resume_both_replay_the_uninterrupted_run(ray_local, tiny_uneven, data_root,
                                                                            tmp_path):
    """Two workers, each owning a fixed user range (partition.user_range): a restart,
    automatic or by hand, trains every rank on the very rows the uninterrupted run did, so
    a run that lost a worker and a run resumed with --resume end bitwise equal."""
    # tiny: 2 ranks × ~3 steps per epoch; step 7 falls in epoch 3, after two checkpoints.
    died = run_training(make_config(tiny_uneven, tmp_path, "fault", *TINY_MODEL, "train.epochs=4",
                                    "scaling.num_workers=2", "train.fail_at_step=7", "scaling.max_failures=1"))
    assert (died.run_dir / ".fault_injected").is_file()
    assert died.epochs_run == 4 and _epochs(died.run_dir) == [1, 2, 3, 4]  # replayed epochs are not duplicated
    assert died.replica_fingerprints[0] == died.replica_fingerprints[1]  # sampler, z_in, C-Net
    assert json.loads((died.run_dir / "final_metrics.json").read_text())["replicas_in_sync"] is True
    assert (died.run_dir / "curves.png").stat().st_size > 0 and (died.run_dir / "best_model.pt").is_file()

    first = run_training(make_config(tiny_uneven, tmp_path, "split", *TINY_MODEL, "train.epochs=2",
                                     "scaling.num_workers=2"))
    resumed = run_training(make_config(tiny_uneven, tmp_path, "split", *TINY_MODEL, "train.epochs=4",
                                       "scaling.num_workers=2", f"run.resume={first.run_dir}"))
    assert _epochs(resumed.run_dir) == [1, 2, 3, 4]
    a = [json.loads(x) for x in (died.run_dir / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["valid/recall@20"] == pytest.approx(rb["valid/recall@20"], abs=1e-9)
    assert died.replica_fingerprints == resumed.replica_fingerprints  # bitwise the same weights

    # Another dataset: refused before any worker starts.
    other = shutil.copytree(tiny_uneven, data_root / "tiny-other")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["config"]["seed"] = 8
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="another dataset"):
        run_training(make_config(other, tmp_path, "split", *TINY_MODEL, f"run.resume={first.run_dir}"))
    # A corrupt latest checkpoint: detected, never loaded; resume passes over it to an intact one.
    state = latest_checkpoint_dir(resumed.run_dir) / "state.pt"
    state.write_bytes(state.read_bytes()[:-100])
    others = [n for n in checkpoint_names(resumed.run_dir) if n != state.parent.name]
    if others:
        assert choose_resume_checkpoint(resumed.run_dir).skipped[0][0] == state.parent.name
    else:
        with pytest.raises(CheckpointError, match="corrupt"):
            choose_resume_checkpoint(resumed.run_dir)
