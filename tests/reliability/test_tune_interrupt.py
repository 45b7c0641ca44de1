"""Sweeps survive interruption and never wait forever: a long sweep on a shared cluster is
interrupted, and a trial that cannot get its resources must end, not hang.

* outcomes are labelled from what happened (ledger + the trial's own run directory), and a
  trial whose Tune result is missing is reported from its final_metrics.json;
* placement groups whose creator (a stopped trial's Ray Train controller) died are removed;
* a sweep in which no trial can start fails, naming the missing resource;
* SIGINT mid-sweep exits 130 with the resume command, and the resumed sweep reports every
  completed trial without retraining it; interrupted at its worst moments (before a trial's
  first report, while a trial writes its run directory, between trials), every resume
  succeeds, and the best of tied trials is the same after each;
* a failed trial makes the sweep exit 1 with the command that reruns it (`--resume`, which
  keeps the completed trials);
* `--resume` never unpickles a Tune state file the sweep did not record.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from ld4mrec_dist.config import load_config, save_config
from ld4mrec_dist.tune import ledger
from ld4mrec_dist.tune.search_space import sweep_from_dict, sweep_to_dict
from ld4mrec_dist.tune.sweep import RUNS_DIR, summarize, trial_rows
from ld4mrec_dist.tune.tune_state import StateRecorder

REPO = Path(__file__).resolve().parents[2]
METRIC = "valid/recall@20"


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"jobs_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- labels, from what happened


@pytest.mark.parametrize("events,completed,error,expected", [
    (["started", "terminated"], True, "", ledger.COMPLETED),  # final_metrics.json decides
    (["started"], True, "", ledger.COMPLETED),  # finished, Tune never saw it end (the case)
    (["started", "stopped_by_asha", "terminated"], False, "", ledger.STOPPED_BY_ASHA),
    (["started"], False, "", ledger.INTERRUPTED),  # running when the sweep was interrupted
    (["started", "stopped_by_asha", "started"], False, "", ledger.INTERRUPTED),  # only since the last start
    ([], False, "", ledger.NOT_STARTED),
    (["started", "error"], False, "", ledger.ERROR),
    (["started"], False, "ValueError: boom", ledger.ERROR),
    (["started", "terminated"], False, "", ledger.NO_RESULT),
])
def test_outcome_is_what_happened(events, completed, error, expected):
    assert ledger.outcome_of([{"event": e} for e in events], completed, error) == expected


def _fake_sweep(tmp_path: Path):
    """A 2 × 2 grid's sweep directory with one trial of each kind, and Tune-like results
    (Tune lost the completed trial `a`'s result, as after an interrupted sweep's resume)."""
    spec = sweep_from_dict({"grid": {"diffusion.sr_prob": [0.01, 0.1], "diffusion.sr_gamma": [0.01, 0.1]},
                            "name": "fake"})
    sweep_dir = tmp_path / "sweep"
    history = [{"epoch": 1, METRIC: 0.30, "test/recall@20": 0.31, "train_time_s": 1.0, "eval_time_s": 0.5},
               {"epoch": 2, METRIC: 0.20, "train_time_s": 1.0, "eval_time_s": 0.5}]
    for trial in "abcd":
        (sweep_dir / RUNS_DIR / trial).mkdir(parents=True)
    (sweep_dir / RUNS_DIR / "a" / "final_metrics.json").write_text(json.dumps(
        {"best_epoch": 7, "epochs_run": 9, "valid": {"recall@20": 0.25}, "test": {"recall@20": 0.24},
         "wall_time_s": 12.0}))
    (sweep_dir / RUNS_DIR / "b" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    (sweep_dir / RUNS_DIR / "c" / "metrics.jsonl").write_text(json.dumps(history[0]) + "\n")
    for trial, events in {"a": ["started"], "b": ["started", "stopped_by_asha", "terminated"],
                          "c": ["started"], "d": []}.items():
        for e in events:
            ledger.record(sweep_dir, trial, e, **({"epoch": 2} if e == "stopped_by_asha" else {}))
    grid = {"a": (0.01, 0.01), "b": (0.1, 0.01), "c": (0.01, 0.1), "d": (0.1, 0.1)}
    results = [SimpleNamespace(path=str(sweep_dir / t), config={"diffusion.sr_prob": p, "diffusion.sr_gamma": g},
                               error=None, metrics_dataframe=None if t != "c" else pd.DataFrame())
               for t, (p, g) in grid.items()]
    return spec, sweep_dir, results


def test_rows_label_each_trial_and_read_results_from_its_run_dir(tmp_path):
    spec, sweep_dir, results = _fake_sweep(tmp_path)
    rows = {r["trial_id"]: r for r in trial_rows(results, spec, sweep_dir)}
    assert {t: r["outcome"] for t, r in rows.items()} == {
        "a": "completed", "b": "stopped_by_asha", "c": "interrupted", "d": "not_started"}
    # the completed trial, with no Tune result at all, is reported from final_metrics.json
    assert rows["a"][METRIC] == 0.25 and rows["a"]["test/recall@20"] == 0.24
    assert rows["a"]["best_epoch"] == 7 and rows["a"]["epochs"] == 9
    # the others from metrics.jsonl: best valid epoch, test at that epoch
    assert rows["b"][METRIC] == 0.30 and rows["b"]["best_epoch"] == 1 and rows["b"]["epochs"] == 2
    assert rows["b"]["stopped_at_epoch"] == 2 and rows["b"]["time_s"] == 3.0
    assert rows["d"]["best_epoch"] is None


def test_best_config_and_heatmap_use_completed_trials_only(tmp_path):
    spec, sweep_dir, results = _fake_sweep(tmp_path)
    summary = summarize(results, spec, load_config(), sweep_dir)
    # b (0.30, stopped by ASHA) and c (0.30, interrupted) score higher but did not finish
    assert summary.best["trial_id"] == "a"
    best_cfg = load_config(summary.best_config)
    assert (best_cfg.diffusion.sr_prob, best_cfg.diffusion.sr_gamma) == (0.01, 0.01)
    assert [r["trial_id"] for r in summary.unfinished] == ["c", "d"]
    with open(summary.csv) as f:
        assert {r["trial_id"]: r["outcome"] for r in csv.DictReader(f)}["b"] == "stopped_by_asha"
    assert len(summary.heatmaps) == 1 and summary.heatmaps[0].stat().st_size > 10_000


def test_asha_stops_are_recorded_and_never_cut_off_a_trial_at_its_last_epoch(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    from ld4mrec_dist.tune.guard import RecordingASHA

    asha = RecordingASHA(tmp_path, time_attr="epoch", metric=METRIC, mode="max", max_t=4, grace_period=1,
                         reduction_factor=2, stop_last_trials=False)
    strong, weak = SimpleNamespace(trial_id="strong"), SimpleNamespace(trial_id="weak")
    for t in (strong, weak):
        asha.on_trial_add(None, t)
    for epoch in (1, 2, 3, 4):  # the strong trial sets every rung first
        assert asha.on_trial_result(None, strong, {"epoch": epoch, METRIC: 0.5}) == TrialScheduler.CONTINUE
    weaker = SimpleNamespace(trial_id="weaker")
    asha.on_trial_add(None, weaker)
    assert asha.on_trial_result(None, weaker, {"epoch": 1, METRIC: 0.1}) == TrialScheduler.STOP
    # below the cutoff at epoch 4 too, but its training is over: it finishes and writes its outputs
    for epoch in (1, 2, 3):
        asha.on_trial_result(None, weak, {"epoch": epoch, METRIC: 0.9})
    assert asha.on_trial_result(None, weak, {"epoch": 4, METRIC: 0.01}) == TrialScheduler.CONTINUE
    events = ledger.read_events(tmp_path)
    assert [(e["event"], e["epoch"]) for e in events["weaker"]] == [("stopped_by_asha", 1)]
    assert "weak" not in events and "strong" not in events


# ---------------------------------------------------------------- placement groups and stalls


@pytest.mark.timeout(300)
def test_placement_group_of_a_dead_creator_is_removed(ray_local):
    """The leak itself: an actor (like a stopped trial's Ray Train controller) creates a
    placement group and dies ungracefully; the group outlives it, holding its CPU, until
    the reaper removes it. A live creator's group, and the driver's own (Tune's trial
    groups), are left alone."""
    import ray
    from ray.util.placement_group import placement_group

    from ld4mrec_dist.tune import guard

    @ray.remote(num_cpus=0)
    class Creator:
        def make(self) -> str:
            pg = placement_group([{"CPU": 0.5}])
            ray.get(pg.ready(), timeout=60)
            return pg.id.hex()

    own = placement_group([{"CPU": 0.1}])  # created by this driver, as Tune creates its trials' groups
    ray.get(own.ready(), timeout=60)
    dying, living = Creator.remote(), Creator.remote()
    leaked, kept = ray.get(dying.make.remote(), timeout=120), ray.get(living.make.remote(), timeout=120)
    ray.kill(dying)
    deadline = time.monotonic() + 60
    while leaked not in {pg.placement_group_id.hex() for pg in guard.orphaned_placement_groups()}:
        assert time.monotonic() < deadline, "the killed creator's placement group was not seen as orphaned"
        time.sleep(0.2)
    assert ray.util.placement_group_table()[leaked]["state"] == "CREATED"  # leaked: still holding 0.5 CPU

    removed = guard.reap()
    assert leaked in removed and kept not in removed
    table = ray.util.placement_group_table()
    assert table[leaked]["state"] == "REMOVED" and table[kept]["state"] == "CREATED"
    assert own.id.hex() not in removed
    assert guard.reap(all_actor_groups=True, since_ms=time.time() * 1000 + 60_000) == []  # older than the sweep
    at_end = guard.reap(all_actor_groups=True)  # at the end of a sweep every actor's group goes
    assert kept in at_end and own.id.hex() not in at_end
    assert ray.util.placement_group_table()[own.id.hex()]["state"] == "CREATED"
    ray.util.remove_placement_group(own)
    ray.kill(living)


def _tiny_sweep_file(tmp_path: Path, **extra) -> Path:
    sweep = {
        "name": "tiny",
        "overrides": {"data.synthetic": "tiny", "data.root": str(tmp_path / "data"), "train.epochs": 2,
                      "train.batch_size": 32, "model.hidden": 32, "model.svd_rank": 8,
                      "scaling.cpus_per_worker": 0.25, "scaling.max_failures": 0},
        "grid": {"diffusion.sr_prob": [0.01, 0.2]},
        "asha": {"enabled": False},
        "workers_per_trial": 1,
        "max_concurrent_trials": 1,
        **extra,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sweep_that_cannot_start_any_trial_fails_naming_the_resource(ray_local, tmp_path, capsys):
    """Every CPU held by a placement group (as leaked ones held them): no trial can start,
    and the sweep fails after stall_timeout_s instead of waiting forever."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    # Resources the previous test released may still be on their way back: hog them all,
    # or the sweep could start a trial with what returns later (seen once in a full run).
    total = ray.cluster_resources().get("CPU", 0.0)
    _wait_for(lambda: ray.available_resources().get("CPU", 0.0) >= total, "every CPU free", 60)
    hog = placement_group([{"CPU": total}])
    ray.get(hog.ready(), timeout=60)
    try:
        sweep_file = _tiny_sweep_file(tmp_path, stall_timeout_s=5)
        t0 = time.monotonic()
        code = load_job("tune").main(["--sweep", str(sweep_file), "--storage", str(tmp_path / "sweeps"),
                                      "--name", "stalled"])
        elapsed = time.monotonic() - t0
    finally:
        remove_placement_group(hog)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "sweep stalled" in err and "CPU" in err and "placement group" in err, err
    assert "--resume" in err
    assert elapsed < 200


# ---------------------------------------------------------------- SIGINT and resume


def _wait_for(predicate, what: str, timeout_s: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while not (found := predicate()):
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the sweep ended (code {proc.returncode}) before {what}:\n{out[-3000:]}\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} within {timeout_s}s"
        time.sleep(0.5)
    return found


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sigint_exits_130_with_resume_command_and_resume_reports_every_completed_trial(ray_local, tmp_path):
    sweep_file = _tiny_sweep_file(tmp_path, stall_timeout_s=300)
    storage = tmp_path / "sweeps"
    sweep_dir = storage / "s"
    proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "tune.py"), "--sweep", str(sweep_file),
                             "--storage", str(storage), "--name", "s"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # No timing guess: interrupt once the first trial has written its final metrics.
        finals = _wait_for(lambda: sorted((sweep_dir / RUNS_DIR).glob("*/final_metrics.json")),
                           "trial's final_metrics.json", 900, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, f"{out[-3000:]}\n{err[-3000:]}"
    assert f"--resume {sweep_dir}" in err and "resume it with" in err, err[-3000:]

    with open(sweep_dir / "trials.csv") as f:
        before = {r["trial_id"]: r for r in csv.DictReader(f)}
    done = finals[0].parent.name
    assert before[done]["outcome"] == "completed", before
    # the other trial: running, queued, or not yet created by Tune (it creates trials lazily)
    assert all(r["outcome"] in ("interrupted", "not_started") for t, r in before.items() if t != done), before
    assert "1 of 2 trial(s) left to run" in err, err[-3000:]
    final_mtime = finals[0].stat().st_mtime_ns

    assert load_job("tune").main(["--resume", str(sweep_dir)]) == 0
    with open(sweep_dir / "trials.csv") as f:
        after = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert len(after) == 2 and {r["outcome"] for r in after.values()} == {"completed"}, after
    assert after[done][METRIC] == before[done][METRIC]
    assert finals[0].stat().st_mtime_ns == final_mtime  # reported from disk, not trained again
    best = json.loads((sweep_dir / "best_trial.json").read_text())
    assert best["trial_id"] == max(after.values(), key=lambda r: float(r[METRIC]))["trial_id"]


# ---------------------------------------------------------------- worst moments, ties, failed trials


def _in_process_sweep(tmp_path: Path, data: Path, grid: dict, epochs: int = 2) -> Path:
    path = tmp_path / "inproc.yaml"
    path.write_text(yaml.safe_dump({
        "name": "inproc",
        "overrides": {"data.path": str(data), "train.epochs": epochs, "train.batch_size": 32, "model.hidden": 32,
                      "model.svd_rank": 8, "eval.batch_size": 64, "scaling.cpus_per_worker": 0.5},
        "grid": grid, "asha": {"enabled": False}, "workers_per_trial": 0, "max_concurrent_trials": 1,
    }, sort_keys=False))
    return path


def _sigint_at(monkeypatch, hook: str | None) -> None:
    """Ctrl-C, delivered to the sweep's driver once, from inside Tune's loop when `hook`
    (a SweepGuard callback) first fires: no timing involved. None: no Ctrl-C."""
    from ld4mrec_dist.tune.guard import SweepGuard

    monkeypatch.undo()  # the previous call's hook, if any
    if hook is None:
        return
    original, sent = getattr(SweepGuard, hook), []

    def then_sigint(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # Tune's handler: stop, save the state, return

    monkeypatch.setattr(SweepGuard, hook, then_sigint)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_interrupted_at_its_worst_moments_every_resume_succeeds_ties_pick_the_same_trial_failures_exit_1(
        ray_local, tmp_path, tiny_data, job, monkeypatch, capsys):
    """3 in-process trials, one at a time: two train on the same data (their metrics tie),
    the third names a dataset that does not exist (it fails). The sweep is interrupted
    before the first trial's first report, then (resumed) right after a report while the
    trial is still writing its run directory, then (resumed) between two trials. The next
    resume runs the rest: exit 1 for the failed trial, with the command that reruns it;
    that command reruns only the failed trial, and picks the same best trial of the tie."""
    tune_job = job("tune")
    missing = tmp_path / "no-such-dataset"
    sweep_file = _in_process_sweep(tmp_path, tiny_data, {"data.path": [str(tiny_data), str(tiny_data), str(missing)]})
    sweep_dir = tmp_path / "sweeps" / "s"
    for i, moment in enumerate(["on_trial_start", "on_trial_result", "on_trial_complete"]):
        _sigint_at(monkeypatch, moment)
        argv = (["--sweep", str(sweep_file), "--storage", str(sweep_dir.parent), "--name", "s"] if i == 0
                else ["--resume", str(sweep_dir)])
        assert tune_job.main(argv) == 130, moment
        out = capsys.readouterr()
        assert f"--resume {sweep_dir}" in out.err, (moment, out.err[-2000:])
    _sigint_at(monkeypatch, None)

    assert tune_job.main(["--resume", str(sweep_dir)]) == 1
    out = capsys.readouterr()
    assert "1 of 3 trial(s) failed" in out.err and out.err.rstrip().endswith(f"--resume {sweep_dir}"), out.err[-2000:]
    assert "╭" not in out.out  # no Tune boxes
    with open(sweep_dir / "trials.csv") as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    outcomes = sorted(r["outcome"] for r in rows.values())
    assert outcomes == ["completed", "completed", "error"], rows
    failed = next(t for t, r in rows.items() if r["outcome"] == "error")
    assert str(missing) in rows[failed]["error"] or "manifest" in rows[failed]["error"], rows[failed]
    tied = sorted(t for t, r in rows.items() if r["outcome"] == "completed")
    assert rows[tied[0]][METRIC] == rows[tied[1]][METRIC]  # a tie, as designed
    assert json.loads((sweep_dir / "best_trial.json").read_text())["trial_id"] == tied[0]  # the lower id
    assert f"2 completed trials tie at {METRIC}" in out.out and "lowest trial id" in out.out
    finals = {t: (sweep_dir / RUNS_DIR / t / "final_metrics.json").stat().st_mtime_ns for t in tied}
    for t in tied:  # Tune's TensorBoard logger: `tensorboard --logdir <sweep dir>` shows every trial
        assert list((sweep_dir / t).glob("events.out.tfevents.*")), t

    def starts(trial: str) -> int:
        return sum(e["event"] == "started" for e in ledger.read_events(sweep_dir)[trial])

    before = {t: starts(t) for t in rows}
    assert tune_job.main(["--resume", str(sweep_dir)]) == 1  # the printed command: reruns the failed trial
    assert {t: starts(t) - before[t] for t in rows} == {t: int(t == failed) for t in rows}
    assert {t: (sweep_dir / RUNS_DIR / t / "final_metrics.json").stat().st_mtime_ns for t in tied} == finals
    assert json.loads((sweep_dir / "best_trial.json").read_text())["trial_id"] == tied[0]  # the same choice


def test_resume_never_unpickles_a_replaced_tuner_pkl(tmp_path, job, capsys):
    """Someone with write access to the sweep directory replaces tuner.pkl with a pickle
    that creates a file when loaded: --resume refuses it in one line, and nothing runs."""
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    spec = sweep_from_dict({"grid": {"diffusion.sr_prob": [0.01]}, "name": "s"})
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(sweep_to_dict(spec)))
    save_config(load_config(), sweep_dir / "base_config.yaml")
    (sweep_dir / "tuner.pkl").write_bytes(pickle.dumps({"the sweep's": "state"}))
    StateRecorder(sweep_dir).record()  # as the sweep records what Tune wrote

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    malicious = pickle.dumps(Payload())
    (sweep_dir / "tuner.pkl").write_bytes(malicious)
    assert job("tune").main(["--resume", str(sweep_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{sweep_dir / 'tuner.pkl'} changed since the sweep wrote it" in err, err
    assert not marker.exists()
    pickle.loads(malicious)  # the payload is real: loading it is what would have run it
    assert marker.exists()
