"""jobs/tune.py end to end: a 4-trial Ray Tune sweep, and in-process trials reporting to ASHA.

The units of ld4mrec_dist/tune are tested in tests/ld4mrec_dist/tune/."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import yaml

from ld4mrec_dist.config import load_config

REPO = Path(__file__).resolve().parents[2]
SWEEPS = REPO / "jobs" / "configs" / "sweeps"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"jobs_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overrides_may_stand_after_any_flag():
    args = load_job("tune").parse_args(["--sweep", "s.yaml", "train.lr=0.01", "--smoke-test", "data.seed=3"])
    assert (args.sweep, args.smoke_test, args.overrides) == ("s.yaml", True, ["train.lr=0.01", "data.seed=3"])


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
