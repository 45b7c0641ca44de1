"""Where a run's ranks go, and whether they fit: in this process (`scaling.num_workers = 0`)
or on Ray Train workers, each asking `scaling.cpus_per_worker` CPUs (and a GPU with
`scaling.use_gpu`), checked against the cluster before any worker starts.
"""

from __future__ import annotations

import os

from ld4mrec_dist.config import Config

WORKER_GROUP_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
DEFAULT_START_TIMEOUT_S = 60.0  # Ray Train's own default per start attempt
# The user's own setting, if any, read before a run sets it (`launch.make_torch_trainer`).
USER_START_TIMEOUT_S = os.environ.get(WORKER_GROUP_START_TIMEOUT_ENV, "")


class ResourceError(RuntimeError):
    """The cluster cannot hold what `scaling.*` asks for: says what exists, what was asked, the fix."""


def runs_in_process(cfg: Config) -> bool:
    """The one place that decides: 0 workers train in this process, without Ray Train (and
    without checkpoints); ≥ 1 on that many Ray Train workers."""
    return cfg.scaling.num_workers == 0


def rank_count(cfg: Config) -> int:
    """W, the ranks of the run: the workers, or the one in-process rank."""
    return max(cfg.scaling.num_workers, 1)


def check_gpu_request(cfg: Config) -> None:
    """`use_gpu` in-process needs CUDA here; it must not fall back to the CPU silently."""
    import torch

    if cfg.scaling.use_gpu and runs_in_process(cfg) and not torch.cuda.is_available():
        raise ResourceError("scaling.use_gpu=true with scaling.num_workers=0 trains in this process, and this "
                            "host has no CUDA GPU (torch.cuda.is_available() is False): set "
                            "scaling.use_gpu=false, or run on a GPU host")


def worker_resources(cfg: Config) -> dict[str, float]:
    return {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1.0} if cfg.scaling.use_gpu else {})}


def format_resources(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items())) or "nothing"


def cluster_shortfall(cfg: Config, total: dict[str, float], nodes: list[dict[str, float]]) -> list[str]:
    """What the request lacks against the cluster's resources (empty when it fits)."""
    per_worker, n = worker_resources(cfg), rank_count(cfg)
    problems = []
    for key, amount in per_worker.items():
        have = total.get(key, 0.0)
        biggest = max((node.get(key, 0.0) for node in nodes), default=have)
        if have + 1e-9 < amount * n:
            problems.append(f"{key} {amount * n:g} for {n} workers × {amount:g}, the cluster has {have:g}")
        elif biggest + 1e-9 < amount:
            problems.append(f"{key} {amount:g} per worker on one node, the largest node has {biggest:g}")
    return problems


def cluster_cpu_gpu(kind: str) -> dict[str, float]:
    """The Ray cluster's CPUs and GPUs: "total" (what exists) or "free" (not reserved now)."""
    import ray

    raw = ray.cluster_resources() if kind == "total" else ray.available_resources()  # type: ignore[no-untyped-call]
    return {k: float(v) for k, v in raw.items() if k in ("CPU", "GPU")}


def check_cluster_fits(cfg: Config) -> None:
    """Fail before `fit()` when the cluster cannot ever hold the workers (Ray Train would
    retry the worker-group start every minute, for ever), unless it may still grow."""
    import ray

    if cfg.scaling.wait_for_resources_s > 0:
        return  # an autoscaling cluster may add the nodes: the start timeout bounds the wait
    total = cluster_cpu_gpu("total")
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]
    problems = cluster_shortfall(cfg, total, nodes)
    if problems:
        raise ResourceError(
            f"scaling asks for more than the cluster has ({format_resources(total)}): {'; '.join(problems)}. "
            "Lower scaling.num_workers / scaling.cpus_per_worker (or set scaling.use_gpu=false), or, on an "
            "autoscaling cluster that will add nodes, set scaling.wait_for_resources_s=<seconds>")


def start_timeout_s(cfg: Config) -> float:
    """Seconds one worker-group start may wait for its resources (Ray Train's env setting)."""
    if cfg.scaling.wait_for_resources_s > 0:
        return cfg.scaling.wait_for_resources_s
    return float(USER_START_TIMEOUT_S or DEFAULT_START_TIMEOUT_S)
