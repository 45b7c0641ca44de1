"""The job scripts end every failure in one line that says what to do next: a run that
used up its restarts, Ctrl-C (exit 130), recommend.py's bad run dir / moved dataset /
missing CUDA or a damaged model, and relative paths inside a Ray job's temporary working
directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_pipeline.prepare import prepare_synthetic
from ld4mrec_dist.config import load_config
from ld4mrec_dist.run_dir import ArtefactDamaged, anchored_path
from ld4mrec_dist.train import failures, launch
from ld4mrec_dist.train.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(job, tiny_settings, tmp_path_factory) -> tuple[Path, Path]:
    """(run dir, dataset) of an in-process run on a private copy of the tiny dataset."""
    root = tmp_path_factory.mktemp("errors-run")
    data = prepare_synthetic("tiny", "clean", root / "data", progress=False)
    code = job("train").main([*tiny_settings, "train.epochs=1", "scaling.num_workers=0", f"data.path={data}",
                              f"run.storage={root / 'runs'}", "run.name=r"])
    assert code == 0
    return root / "runs" / "r", data


# ---------------------------------------------------------------- failed and interrupted runs


class ActorDiedError(Exception):
    """Stands in for ray.exceptions.ActorDiedError (matched by name, as Ray's is)."""


def test_used_up_restarts_end_in_one_line_with_the_resume_command(tmp_path):
    from ray.train import WorkerGroupError

    save_checkpoint(tmp_path / "checkpoint_2026-01-01_00-00-00.000000", {"epoch": 3, "model": {}})
    err = WorkerGroupError("2 workers failed", {
        0: RuntimeError("Traceback (most recent call last):\n  File x\nRuntimeError: [gloo] Connection closed by peer"),
        1: ActorDiedError("The actor died unexpectedly before finishing this task.\n\tclass_name: RayTrainWorker")})
    cfg = load_config(overrides=["scaling.max_failures=2"])
    message = failures.failure_message(err, cfg, tmp_path)
    assert "\n" not in message
    assert message.startswith("training failed: worker rank 1 died; rank 0 failed as a consequence "
                              "(RuntimeError: [gloo] Connection closed by peer)")
    assert "2 restart(s) (scaling.max_failures) used up" in message
    assert message.endswith(f"kept: checkpoint_2026-01-01_00-00-00.000000 (epoch 3); continue with: "
                            f"python jobs/train.py --resume {tmp_path}")
    one = WorkerGroupError("1 worker failed", {0: RuntimeError("Traceback …\nFloatingPointError: non-finite loss")})
    assert "worker rank 0 raised FloatingPointError: non-finite loss" in failures.failure_message(one, cfg, tmp_path)


def test_ctrl_c_of_a_ray_run_prints_the_resume_command(job, tiny_settings, tiny_data, tmp_path, monkeypatch, capsys):
    def interrupted_fit(_trainer, _cfg, run_dir, _console=None):
        (Path(run_dir) / "checkpoint_2026-01-01_00-00-00.000000").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "make_torch_trainer", lambda *a, **k: None)
    monkeypatch.setattr(launch, "fit", interrupted_fit)
    code = job("train").main([*tiny_settings, f"data.path={tiny_data}", f"run.storage={tmp_path}", "run.name=r",
                               "scaling.num_workers=1"])
    assert code == 130
    assert f"python jobs/train.py --resume {tmp_path / 'r'}" in capsys.readouterr().err


def test_ray_trains_own_sigint_exit_counts_as_ctrl_c(tmp_path):
    class AbortedTrainer:  # what Ray Train's SIGINT handler does inside fit(): abort, then sys.exit(0)
        def fit(self):
            raise SystemExit(0)

    with pytest.raises(KeyboardInterrupt):
        launch.fit(AbortedTrainer(), load_config(), tmp_path)


def test_ctrl_c_of_an_in_process_run_exits_130_and_says_there_is_nothing_to_resume(tiny_settings, tiny_data, tmp_path):
    cmd = [sys.executable, str(REPO / "jobs" / "train.py"), *tiny_settings, "train.epochs=100000",
           "scaling.num_workers=0", f"data.path={tiny_data}", f"run.storage={tmp_path}", "run.name=r"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # wait until training is under way, however slow the host
            if "[ld4mrec] epoch" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "in-process runs (scaling.num_workers=0) do not checkpoint" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_of_a_ray_run_then_resume(tiny_settings, tiny_data, tmp_path):
    """jobs/train.py with its own local Ray: SIGINT once the first epochs are checkpointed
    gives exit 130 and the resume command, which then continues the run."""
    env = {**os.environ, "RAY_ADDRESS": "local"}
    train = [sys.executable, str(REPO / "jobs" / "train.py")]
    cmd = [*train, *tiny_settings, "train.epochs=100000", "scaling.num_workers=1", f"data.path={tiny_data}",
           f"run.storage={tmp_path}", "run.name=c"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "[ld4mrec] epoch    2 " in line:  # epoch 1's checkpoint is written before epoch 2 starts
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    resume = f"python jobs/train.py --resume {tmp_path / 'c'}"
    assert proc.returncode == 130, err[-3000:]
    assert f"\ninterrupted; continue from the latest checkpoint with: {resume}\n" in err, err[-3000:]
    done = subprocess.run([*train, "--resume", str(tmp_path / "c"), "train.epochs=4"], env=env,
                          capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from checkpoint_" in done.stdout and "resumed at epoch" in done.stdout


@pytest.mark.slow
def test_failed_ray_run_console_is_quiet_and_ends_in_one_line(tiny_settings, tiny_data, tmp_path):
    """jobs/train.py as a user runs it (its own local Ray, output redirected): rank 0 dies
    at step 6 (epoch 2, after the first checkpoint) with no restart allowed."""
    env = {**os.environ, "RAY_ADDRESS": "local"}
    env.pop("RAY_COLOR_PREFIX", None)
    cmd = [sys.executable, str(REPO / "jobs" / "train.py"), *tiny_settings, "train.epochs=3", "scaling.num_workers=1",
           "train.fail_at_step=6", "scaling.max_failures=0", f"data.path={tiny_data}", f"run.storage={tmp_path}",
           "run.name=f"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-4000:]
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: training failed: worker rank 0 died; 0 restart\(s\) .* used up; kept: checkpoint_\S+ "
                        rf"\(epoch 1\); continue with: python jobs/train\.py --resume {re.escape(str(tmp_path / 'f'))}",
                        last), last
    assert "\x1b[" not in out  # no colour codes in redirected output
    assert "(RayTrainWorker pid=" not in out  # rank 0's lines as they are, no Ray prefix
    assert "Token authentication is enabled" not in out
    for noise in ("Reporting training result", "Checkpoint successfully created", "Graceful shutdown of backend",
                  "FailurePolicy", "Starting execution of Dataset", "Traceback", "(RayTrainWorker"):
        assert noise not in out, noise
    assert out.count("[ld4mrec] epoch    1 ") == 1


# ---------------------------------------------------------------- recommend.py


def test_recommend_on_a_mistyped_run_dir(job, tmp_path, capsys):
    assert job("recommend").main([str(tmp_path / "runs" / "typo")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run directory" in err


def test_recommend_after_the_dataset_moved_points_to_dataset(job, trained, tmp_path, capsys):
    run_dir, data = trained
    moved = tmp_path / "moved"
    shutil.move(str(data), moved)
    try:
        assert job("recommend").main([str(run_dir), "--out", str(tmp_path / "a.parquet")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is gone" in err and "--dataset" in err
        again = [str(run_dir), "--dataset", str(moved), "--out", str(tmp_path / "b.parquet")]
        assert job("recommend").main(again) == 0
    finally:
        shutil.move(str(moved), data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_recommend_on_cuda_without_cuda(job, trained, capsys):
    run_dir, _ = trained
    assert job("recommend").main([str(run_dir), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU" in err and "--device cpu" in err


# ---------------------------------------------------------------- Ray jobs


def test_relative_paths_in_a_ray_job_land_in_a_persistent_place(job, tiny_settings, tmp_path, monkeypatch, capsys):
    """`ray job submit --working-dir .` runs the script in a temporary copy that Ray deletes:
    the default relative data.root / run.storage must not end up there."""
    pkg = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    pkg.mkdir(parents=True)
    home = tmp_path / "home"
    monkeypatch.chdir(pkg)
    monkeypatch.setenv("LD4MREC_HOME", str(home))
    overrides = [*tiny_settings, "data.synthetic=tiny", "train.epochs=1", "scaling.num_workers=0", "run.name=r"]
    assert job("train").main(overrides) == 0
    assert (home / "runs" / "r" / "final_metrics.json").is_file()
    assert any((home / "data").iterdir())  # the synthetic dataset too
    assert not any(p.name != "__pycache__" for p in pkg.iterdir())
    assert f"run.storage=runs → {home / 'runs'}" in capsys.readouterr().out
    # --resume with a relative path resolves to the same place.
    assert anchored_path("runs/r") == str(home / "runs" / "r")


# ---------------------------------------------------------------- files a run reads back
# best_model.pt and item_factors.npy are vouched for by a `.sha256` written after them: a bit
# flip is refused naming the file, never scored.


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of the trained run directory."""
    return Path(shutil.copytree(trained[0], tmp_path / "r"))


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def test_recommend_refuses_a_bit_flipped_model_naming_the_file(job, run, tmp_path, capsys):
    assert job("recommend").main([str(run), "--out", str(tmp_path / "ok.parquet")]) == 0
    model = run / "best_model.pt"
    flip_bit(model, model.stat().st_size // 2)  # inside a weight tensor: torch.load would accept it
    capsys.readouterr()
    assert job("recommend").main([str(run), "--out", str(tmp_path / "bad.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{model} is damaged: its sha256 differs from best_model.pt.sha256" in err
    assert not (tmp_path / "bad.parquet").exists()


def test_a_model_without_its_checksum_says_why_and_how_to_vouch_for_it(job, run, tmp_path, capsys):
    (run / "best_model.pt.sha256").unlink()  # a run written before checksums
    assert job("recommend").main([str(run), "--out", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert "has no best_model.pt.sha256 beside it" in err and "sha256sum best_model.pt > best_model.pt.sha256" in err
    # The documented way to vouch for a trusted file works.
    import hashlib

    digest = hashlib.sha256((run / "best_model.pt").read_bytes()).hexdigest()
    (run / "best_model.pt.sha256").write_text(f"{digest}  best_model.pt\n")
    assert job("recommend").main([str(run), "--out", str(tmp_path / "x.parquet")]) == 0


def test_damaged_item_factors_stop_a_resume_in_the_driver(run):
    from ld4mrec_dist.config import load_config
    from ld4mrec_dist.train.trainer import item_factors_for_run

    flip_bit(run / "item_factors.npy", 300)
    with pytest.raises(ArtefactDamaged, match="item_factors.npy is damaged"):
        item_factors_for_run(None, load_config(), run)  # type: ignore[arg-type]  # no dataset needed: it exists


def test_resume_refuses_a_config_yaml_that_differs_from_what_the_run_wrote(job, run, capsys):
    saved = run / "config.yaml"
    saved.write_text(saved.read_text().replace("lr: 0.001", "lr: 0.0011"))  # one changed digit
    assert job("train").main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{saved} differs from what the run wrote (config.yaml.sha256)" in err
    assert "pass changes as overrides" in err
    (run / "config.yaml.sha256").unlink()  # a run from before checksums: taken as it is, and so refused later
    assert job("train").main(["--resume", str(run)]) == 2
    assert "trained in-process" in capsys.readouterr().err
