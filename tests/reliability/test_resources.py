"""Resource requests the cluster cannot hold fail at once, with what exists and what was
asked; a worker-group start or a data read that cannot get its resources ends, bounded,
in an error naming the missing resource (Ray Train would otherwise retry every minute).

The Ray cases use the session's local Ray instance (2 CPUs, no GPU; tests/conftest.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from data_pipeline.prepare import prepare_synthetic
from ld4mrec_dist.config import load_config
from ld4mrec_dist.train import trainer
from ld4mrec_dist.train.trainer import ResourceError, TrainingFailed, cluster_shortfall, run_training

REPO = Path(__file__).resolve().parents[2]
TINY = ["train.epochs=1", "train.batch_size=32", "model.hidden=32", "model.svd_rank=8", "eval.batch_size=64"]


def _train_job():
    spec = importlib.util.spec_from_file_location("job_train_resources", REPO / "jobs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return prepare_synthetic("tiny", "clean", tmp_path_factory.mktemp("res-data"), progress=False)


def _cfg(data: Path, runs: Path, name: str, *overrides: str):
    return load_config(overrides=[f"data.path={data}", f"run.storage={runs}", f"run.name={name}", *TINY, *overrides])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_gpu_in_process_without_cuda_is_a_one_line_error(tiny, tmp_path, capsys):
    code = _train_job().main([f"data.path={tiny}", f"run.storage={tmp_path}", *TINY,
                              "scaling.num_workers=0", "scaling.use_gpu=true"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "no CUDA GPU" in err and "scaling.use_gpu=false" in err
    assert not any(tmp_path.iterdir())  # refused before a run directory was made


def test_shortfall_names_what_exists_and_what_was_asked():
    cfg = load_config(overrides=["scaling.num_workers=3", "scaling.cpus_per_worker=1"])
    assert cluster_shortfall(cfg, {"CPU": 2.0}, [{"CPU": 2.0}]) == ["CPU 3 for 3 workers × 1, the cluster has 2"]
    gpu = load_config(overrides=["scaling.num_workers=2", "scaling.use_gpu=true"])
    assert cluster_shortfall(gpu, {"CPU": 2.0}, [{"CPU": 2.0}]) == ["GPU 2 for 2 workers × 1, the cluster has 0"]
    # Enough CPUs in total, but no node holds one worker.
    big = load_config(overrides=["scaling.num_workers=2", "scaling.cpus_per_worker=3"])
    assert cluster_shortfall(big, {"CPU": 8.0}, [{"CPU": 2.0}] * 4) == [
        "CPU 3 per worker on one node, the largest node has 2"]
    assert cluster_shortfall(load_config(), {"CPU": 2.0}, [{"CPU": 2.0}]) == []


@pytest.mark.parametrize("overrides, names", [
    (["scaling.num_workers=3", "scaling.cpus_per_worker=1"], ["CPU 3 for 3 workers", "the cluster has 2"]),
    (["scaling.num_workers=1", "scaling.use_gpu=true"], ["GPU 1 for 1 workers", "the cluster has 0"]),
])
def test_infeasible_request_fails_before_fit(ray_local, tiny, tmp_path, overrides, names, monkeypatch):
    def no_fit(*_args, **_kw):
        raise AssertionError("fit() must not start")

    monkeypatch.setattr(trainer, "fit", no_fit)
    with pytest.raises(ResourceError) as info:
        run_training(_cfg(tiny, tmp_path, "infeasible", *overrides))
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in names)
    assert "scaling.wait_for_resources_s" in message  # the way out on a cluster that grows


def test_autoscaling_option_skips_the_up_front_check(ray_local):
    cfg = load_config(overrides=["scaling.num_workers=3", "scaling.cpus_per_worker=1",
                                 "scaling.wait_for_resources_s=600"])
    trainer.check_cluster_fits(cfg)  # no error: the cluster may still grow
    assert trainer.start_timeout_s(cfg) == 600


def test_data_read_without_a_free_cpu_is_a_bounded_error(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 0.5})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(trainer, "DEFAULT_START_TIMEOUT_S", 0.2)
    with pytest.raises(ResourceError, match=r"needs 1 free CPU; only 0.5 of 2 CPU was free"):
        trainer.wait_for_read_cpu(load_config())


@pytest.mark.slow
def test_stalled_worker_group_start_ends_in_an_error_naming_the_resource(ray_local, tiny, tmp_path):
    """A placement group left behind holds 1 of the 2 CPUs: a worker that needs 1.5 fits
    the cluster but never starts. Ray would retry every minute for ever."""
    from ray.util.placement_group import placement_group, remove_placement_group

    hog = placement_group([{"CPU": 1.0}])
    ray_local.get(hog.ready(), timeout=60)
    try:
        cfg = _cfg(tiny, tmp_path, "stall", "scaling.num_workers=1", "scaling.cpus_per_worker=1.5",
                   "scaling.wait_for_resources_s=3", "scaling.max_failures=0")
        with pytest.raises(TrainingFailed) as info:
            run_training(cfg)
    finally:
        remove_placement_group(hog)
    message = str(info.value)
    assert "\n" not in message
    assert "did not start" in message and "1 workers × CPU 1.5" in message and "free now CPU" in message
