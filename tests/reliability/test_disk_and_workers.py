"""Writes refused for space or permission, and more ranks than users: one line, before (or
instead of) worker restarts, and no temporary file left behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from data_pipeline import storage
from data_pipeline.errors import DiskError
from ld4mrec_dist.config import ConfigError
from ld4mrec_dist.partition import ranks_without_train_rows


def refuse_writes(monkeypatch, code: int) -> None:
    """Every local file write fails with `code` after writing half its bytes (a disk filling up)."""
    real = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        real(self, data[: len(data) // 2])
        raise OSError(code, f"{errno.errorcode[code]} simulated", str(self))

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_full_disk_names_the_path_and_the_space_and_leaves_no_temp_file(tmp_path, monkeypatch):
    refuse_writes(monkeypatch, errno.ENOSPC)
    target = tmp_path / "run" / "best_model.pt"
    with pytest.raises(DiskError) as err:
        storage.write_bytes(target, b"x" * 4096)
    msg = str(err.value)
    assert msg.startswith(f"cannot write {target}: no space left on the device (") and "\n" not in msg
    assert "free there, this write needs 4.0 KiB" in msg
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # the half-written .tmp is gone


def test_a_checkpoint_on_a_full_disk_names_its_file_and_leaves_nothing_partial(tmp_path, monkeypatch):
    import torch

    from ld4mrec_dist.train.checkpoint import save_checkpoint

    refuse_writes(monkeypatch, errno.ENOSPC)
    with pytest.raises(DiskError, match=f"cannot write {tmp_path / 'ck' / 'state.pt'}: no space left"):
        save_checkpoint(tmp_path / "ck", {"epoch": 1, "w": torch.zeros(100)})
    assert list((tmp_path / "ck").iterdir()) == []  # neither a partial state.pt nor a meta.json vouching for it


@pytest.mark.parametrize(("code", "why"), [(errno.EROFS, "the file system is read-only"),
                                           (errno.EACCES, "permission denied")])
def test_read_only_run_storage_is_one_line_from_the_job(job, tiny_data, tmp_path, monkeypatch, capsys, code, why):
    refuse_writes(monkeypatch, code)
    runs = tmp_path / "runs"
    rc = job("train").main([f"data.path={tiny_data}", f"run.storage={runs}", "run.name=r", "scaling.num_workers=0",
                            "train.epochs=1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert f"error: cannot write {runs / 'r' / 'config.yaml'}: {why}; " in err
    assert not list((runs / "r").glob(".*.tmp"))


def test_prepare_into_a_read_only_place_is_one_line_and_leaves_no_temp_dir(job, tmp_path, monkeypatch, capsys):
    csv = tmp_path / "r.csv"
    csv.write_text("user_id,item_id\n" + "\n".join(f"{u},{i}" for u in range(5) for i in range(3)) + "\n")
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args, **kwargs) -> None:
        if self.name.startswith(".out.tmp-"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    rc = job("prepare").main(["--source", "csv", "--path", str(csv), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and ": the file system is read-only; " in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_a_worker_disk_error_ends_the_run_without_a_restart():
    """The failure policy Ray Train's controller uses: a disk error raises at once (no
    restart), any other worker error is retried up to max_failures as before."""
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from ld4mrec_dist.train.failure_policy import DiskErrorsEndTheRun, disk_failure

    policy = DiskErrorsEndTheRun(FailureConfig(max_failures=2))
    full = DiskError("cannot write /runs/r/best_model.pt: no space left on the device (0 B free there)")
    assert policy.make_decision(WorkerGroupError("rank 0", {0: full, 1: RuntimeError("gloo")})) \
        == FailureDecision.RAISE
    raw = OSError(errno.EROFS, "Read-only file system")  # e.g. Ray persisting a checkpoint
    assert disk_failure(WorkerGroupError("rank 1", {1: raw})) is raw
    assert policy.make_decision(WorkerGroupError("rank 1", {1: RuntimeError("boom")})) == FailureDecision.RETRY


def test_the_trainer_hands_that_policy_to_ray_trains_controller(tmp_path, monkeypatch):
    from ray.train.v2.api.config import FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from ld4mrec_dist.train.failure_policy import DiskErrorsEndTheRun, LD4MRecTorchTrainer

    seen: dict = {}
    monkeypatch.setattr(DataParallelTrainer, "_initialize_and_run_controller", lambda self, **kw: seen.update(kw))
    trainer = LD4MRecTorchTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=1),
                                  run_config=RunConfig(failure_config=FailureConfig(max_failures=3),
                                                       storage_path=str(tmp_path)))
    trainer._initialize_and_run_controller(failure_policy=None)  # what fit() calls, with Ray's default policy
    assert isinstance(seen["failure_policy"], DiskErrorsEndTheRun)
    assert seen["failure_policy"].failure_config.max_failures == 3


def test_failed_runs_message_for_a_disk_error_says_it_was_not_retried(tmp_path):
    from ray.train.v2.api.exceptions import WorkerGroupError

    from ld4mrec_dist.config import load_config
    from ld4mrec_dist.train.failures import failure_message

    err = WorkerGroupError("…", {0: DiskError("cannot write /r/best_model.pt: no space left on the device")})
    msg = failure_message(err, load_config(), tmp_path)
    assert msg == ("training failed: cannot write /r/best_model.pt: no space left on the device "
                   "(a disk error: not retried, a restart would fail the same way)")


def test_ranks_without_train_rows():
    assert ranks_without_train_rows(list(range(10)), 10, 4) == []  # type: ignore[arg-type]
    assert ranks_without_train_rows([0, 1, 2], 3, 5) == [0, 2]  # type: ignore[arg-type]  # world > users
    assert ranks_without_train_rows([0, 1, 8, 9], 10, 3) == [1]  # type: ignore[arg-type]  # a block without rows


def test_more_workers_than_users_is_refused_before_any_worker_starts(tiny_data, tiny_config, tmp_path):
    from ld4mrec_dist.train.trainer import prepare_run

    cfg = tiny_config(tiny_data, tmp_path / "runs", "r", "scaling.num_workers=101", "scaling.cpus_per_worker=0.01")
    with pytest.raises(ConfigError) as err:
        prepare_run(cfg)  # the driver's check: no Ray, no run directory
    assert str(err.value).startswith("scaling.num_workers=101: 101 data-parallel rank(s), but rank 0 (no user at all) "
                                     "would get no train rows")
    assert "of the 100 users" in str(err.value) and "use fewer workers" in str(err.value)
    assert not (tmp_path / "runs").exists()
