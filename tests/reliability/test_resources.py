"""Resource requests the cluster cannot hold fail at once, with what exists and what was
asked; a worker-group start that cannot get its resources ends, bounded,
in an error naming the missing resource (Ray Train would otherwise retry every minute).

The Ray cases use the session's local Ray instance (2 CPUs, no GPU; tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from ld4mrec_dist.config import load_config
from ld4mrec_dist.train import launch, resources
from ld4mrec_dist.train.failures import TrainingFailed
from ld4mrec_dist.train.resources import ResourceError, cluster_shortfall
from ld4mrec_dist.train.trainer import run_training


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_gpu_in_process_without_cuda_is_a_one_line_error(job, tiny_data, tiny_settings, tmp_path, capsys):
    code = job("train").main([f"data.path={tiny_data}", f"run.storage={tmp_path}", *tiny_settings, "train.epochs=1",
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
def test_infeasible_request_fails_before_fit(ray_local, tiny_data, tiny_config, tmp_path, overrides, names,
                                             monkeypatch):
    def no_fit(*_args, **_kw):
        raise AssertionError("fit() must not start")

    monkeypatch.setattr(launch, "fit", no_fit)
    with pytest.raises(ResourceError) as info:
        run_training(tiny_config(tiny_data, tmp_path, "infeasible", "train.epochs=1", *overrides))
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in names)
    assert "scaling.wait_for_resources_s" in message  # the way out on a cluster that grows


def test_autoscaling_option_skips_the_up_front_check(ray_local):
    cfg = load_config(overrides=["scaling.num_workers=3", "scaling.cpus_per_worker=1",
                                 "scaling.wait_for_resources_s=600"])
    resources.check_cluster_fits(cfg)  # no error: the cluster may still grow
    assert resources.start_timeout_s(cfg) == 600


@pytest.mark.slow
def test_stalled_worker_group_start_ends_in_an_error_naming_the_resource(ray_local, tiny_data, tiny_config, tmp_path):
    """A placement group left behind holds 1 of the 2 CPUs: a worker that needs 1.5 fits
    the cluster but never starts. Ray would retry every minute for ever."""
    from ray.util.placement_group import placement_group, remove_placement_group

    hog = placement_group([{"CPU": 1.0}])
    ray_local.get(hog.ready(), timeout=60)
    try:
        cfg = tiny_config(tiny_data, tmp_path, "stall", "train.epochs=1", "scaling.num_workers=1",
                          "scaling.cpus_per_worker=1.5", "scaling.wait_for_resources_s=3", "scaling.max_failures=0")
        with pytest.raises(TrainingFailed) as info:
            run_training(cfg)
    finally:
        remove_placement_group(hog)
    message = str(info.value)
    assert "\n" not in message
    assert "did not start" in message and "1 workers × CPU 1.5" in message and "free now CPU" in message
