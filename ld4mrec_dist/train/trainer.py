"""The driver side of a training run: dataset, run directory, Ray Train, final outputs.

`run_training(cfg)` resolves the dataset (preparing the built-in synthetic one when no
path is given), fits the randomized-SVD collaborative encoder once, launches
`train_loop_per_worker` on `cfg.scaling.num_workers` Ray Train workers (PyTorch DDP:
gloo on CPU, NCCL on GPU) and writes final_metrics.json, curves.png and a summary.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline import storage
from data_pipeline.dataset import PreparedDataset, open_dataset
from ld4mrec_dist.config import Config, config_to_dict, config_to_yaml
from ld4mrec_dist.encoders import svd_item_factors
from ld4mrec_dist.report import format_table, plot_training_curves, read_metrics
from ld4mrec_dist.run_dir import (
    CONFIG_FILE,
    CURVES_FILE,
    FINAL_METRICS_FILE,
    ITEM_FACTORS_FILE,
    METRICS_FILE,
    RunDir,
    file_in,
    run_location,
    write_item_factors,
)
from ld4mrec_dist.strategy import describe_choice
from ld4mrec_dist.train.checkpoint import (
    META_FILE,
    CheckpointError,
    ResumePoint,
    check_compatible,
    checkpoint_names,
    choose_resume_checkpoint,
    load_checkpoint,
    point_ray_snapshot_at,
)
from ld4mrec_dist.train.loop import train_loop_per_worker

# Ray Train's per-fit() start-up is 20-30 s on 2 cores (docs/design.md §8); the first three cut it
# to ~20 s. The print patch tees each worker print to stdout *and* Train's logger, which
# shows every progress line twice on the console.
RAY_TRAIN_FAST_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
WORKER_GROUP_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
DEFAULT_START_TIMEOUT_S = 60.0  # Ray Train's own default per start attempt
# Ray's temporary copy of `ray job submit --working-dir`: relative paths would land there.
RAY_JOB_WORKING_DIR_MARK = "runtime_resources/working_dir_files/_ray_pkg_"
HOME_ENV = "LD4MREC_HOME"
DEFAULT_HOME = "~/ld4mrec"


class ResourceError(RuntimeError):
    """The cluster cannot hold what `scaling.*` asks for: says what exists, what was asked, the fix."""


class TrainingFailed(RuntimeError):
    """A run that ended in an error, in one line: what failed and how to go on."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: the message says how to resume (or that there is nothing to resume from)."""


@dataclass
class TrainingResult:
    run_dir: RunDir
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    epochs_run: int
    wall_time_s: float
    replica_fingerprints: list[dict[str, str]]
    """Per rank, sha256 of the sampler history, z_in and C-Net: all equal when in sync."""


def in_ray_job_working_dir() -> bool:
    """True inside `ray job submit --working-dir …`, whose current directory is a temporary copy."""
    return RAY_JOB_WORKING_DIR_MARK in os.getcwd().replace(os.sep, "/")


def persistent_home() -> Path:
    """Where relative paths of a Ray job resolve: $LD4MREC_HOME, default ~/ld4mrec (on the driver's node)."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()


def anchored_path(value: str) -> str:
    """A relative local path made absolute under `persistent_home()` inside a Ray job's
    temporary working directory; anything else unchanged."""
    if not value or storage.is_uri(value) or Path(value).expanduser().is_absolute() or not in_ray_job_working_dir():
        return value
    return str(persistent_home() / value)


def anchor_job_paths(cfg: Config) -> None:
    """Inside a Ray job, move relative data/run paths out of Ray's temporary copy of the
    working directory (deleted later) to `persistent_home()`, and say so."""
    moved = []
    for section, name in (("data", "path"), ("data", "root"), ("run", "storage"), ("run", "resume")):
        part = getattr(cfg, section)
        value = getattr(part, name)
        if anchored_path(value) != value:
            setattr(part, name, anchored_path(value))
            moved.append(f"{section}.{name}={value} → {getattr(part, name)}")
    if moved:
        print(f"[ld4mrec] Ray job: relative paths resolve under ${HOME_ENV} ({persistent_home()}), not in "
              f"Ray's temporary copy of --working-dir: {'; '.join(moved)}", flush=True)


def resolve_dataset(cfg: Config) -> RunDir:
    """The prepared dataset: `data.path` (local or URI), or the synthetic one (prepared once)."""
    if cfg.data.path:
        return run_location(storage.normalize(cfg.data.path))
    from data_pipeline.prepare import prepare_synthetic

    root = Path(cfg.data.root).expanduser().resolve()
    return Path(prepare_synthetic(cfg.data.synthetic, cfg.data.setting, root, seed=cfg.data.seed))


def resolve_run_dir(cfg: Config, ds: PreparedDataset) -> RunDir:
    if cfg.run.resume:
        run_dir = storage.normalize(cfg.run.resume)
        if not storage.list_dir(run_dir):
            raise FileNotFoundError(f"--resume {run_dir}: no such run directory (or it is empty)")
        return run_location(run_dir)
    name = cfg.run.name or f"{ds.name}-{cfg.model.ablation}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = storage.join(cfg.run.storage, name)
    if storage.list_dir(run_dir):
        raise FileExistsError(f"run directory {run_dir} exists: choose another run.name, "
                              f"or resume it with --resume {run_dir}")
    storage.make_dirs(run_dir)
    return run_location(run_dir)


def latest_checkpoint_dir(run_dir: RunDir) -> RunDir | None:
    """The run's newest complete-looking Ray Train checkpoint (by the epoch it records)."""
    candidates = []
    for name in storage.list_dir(run_dir):
        meta = storage.join(run_dir, name, META_FILE)
        if not name.startswith("checkpoint_") or not storage.is_file(meta):
            continue
        try:
            candidates.append((json.loads(storage.read_bytes(meta)).get("epoch", -1), name))
        except (OSError, json.JSONDecodeError):
            continue
    return run_location(storage.join(run_dir, max(candidates)[1])) if candidates else None


def check_resumable(run_dir: RunDir, cfg: Config, ds: PreparedDataset) -> ResumePoint:
    """The checkpoint to resume from, verified in the driver before any worker starts: the
    newest intact one (or `run.from_checkpoint`); Ray's run snapshot is pointed at it."""
    if not checkpoint_names(run_dir) and trained_in_process(run_dir):
        raise CheckpointError(f"--resume {run_dir}: the run was trained in-process (scaling.num_workers=0), "
                              "and in-process runs do not checkpoint: nothing to resume; start a new run "
                              "(with scaling.num_workers ≥ 1 to get checkpoints)")
    point = choose_resume_checkpoint(run_dir, cfg.run.from_checkpoint)
    check_compatible(load_checkpoint(point.path), config_to_dict(cfg), ds.manifest_sha256)
    for name, why in point.skipped:
        print(f"[ld4mrec] passing over {name} ({why}); it is kept as skipped_{name}", flush=True)
    point_ray_snapshot_at(run_dir, point)
    print(f"[ld4mrec] resuming from {point.name} (epoch {point.epoch})", flush=True)
    return point


def trained_in_process(run_dir: RunDir) -> bool:
    """Whether the run's saved config.yaml ran it without Ray workers (no checkpoints)."""
    from ld4mrec_dist.config import load_config

    saved = file_in(run_dir, CONFIG_FILE)
    try:
        return storage.is_file(saved) and load_config(saved).scaling.num_workers == 0
    except Exception:  # noqa: BLE001 - an unreadable config is reported elsewhere
        return False


def item_factors_for_run(ds: PreparedDataset, cfg: Config, run_dir: RunDir) -> None:
    """V_k of the train matrix, fitted once per run in the driver and shared by file."""
    path = file_in(run_dir, ITEM_FACTORS_FILE)
    if storage.exists(path):
        return
    t0 = time.perf_counter()
    v_IK = svd_item_factors(ds.split_csr("train"), cfg.model.svd_rank, cfg.train.seed)
    write_item_factors(run_dir, v_IK)
    print(f"[ld4mrec] randomized SVD (k={v_IK.shape[1]}) of the train matrix "
          f"{ds.n_users}×{ds.n_items}: {time.perf_counter() - t0:.1f}s", flush=True)


def loop_config(cfg: Config, ds: PreparedDataset, run_dir: RunDir, resume_from: str = "") -> dict[str, Any]:
    """The workers' config; `resume_from`: the verified checkpoint a resume starts from
    (used when Ray Train has none of its own to hand over)."""
    return {"cfg": config_to_dict(cfg), "dataset": ds.location, "run_dir": str(run_dir),
            "resume_from": resume_from or RESUME_POINTS.get(str(run_dir), "")}


# run directory -> the checkpoint its resume starts from (set by prepare_run, read by loop_config)
RESUME_POINTS: dict[str, str] = {}


def prepare_run(cfg: Config) -> tuple[PreparedDataset, RunDir]:
    """Dataset and run directory ready for workers: config.yaml and V_k written."""
    anchor_job_paths(cfg)
    check_gpu_request(cfg)
    ds = open_dataset(resolve_dataset(cfg), verify="full")  # sizes, shapes, accounting, sha256 (cached)
    run_dir = resolve_run_dir(cfg, ds)
    if cfg.run.resume:
        RESUME_POINTS[str(run_dir)] = check_resumable(run_dir, cfg, ds).path
    storage.write_text(file_in(run_dir, CONFIG_FILE), config_to_yaml(cfg))
    item_factors_for_run(ds, cfg, run_dir)
    print(f"[ld4mrec] dataset {ds.location} ({ds.n_users} users × {ds.n_items} items, "
          f"modalities {ds.modalities}); run directory {run_dir}", flush=True)
    print(describe_choice(cfg, ds.n_items, max(cfg.scaling.num_workers, 1), ds.feature_dims), flush=True)
    return ds, run_dir


def run_training(cfg: Config) -> TrainingResult:
    """Prepare, train on Ray Train (or in-process with 0 workers), write the outputs."""
    t0 = time.perf_counter()
    ds, run_dir = prepare_run(cfg)
    try:
        if cfg.scaling.num_workers == 0:
            out = train_loop_per_worker(loop_config(cfg, ds, run_dir))
        else:
            out = fit(make_torch_trainer(cfg, ds, run_dir), cfg, run_dir)
    except KeyboardInterrupt:
        raise TrainingInterrupted(interrupted_message(cfg, run_dir)) from None
    return finish_run(cfg, run_dir, out, time.perf_counter() - t0)


def resume_command(run_dir: RunDir) -> str:
    return f"python jobs/train.py --resume {run_dir}"


def interrupted_message(cfg: Config, run_dir: RunDir) -> str:
    if cfg.scaling.num_workers == 0:
        return (f"interrupted; in-process runs (scaling.num_workers=0) do not checkpoint, so {run_dir} "
                "cannot be resumed: start it again")
    if not checkpoint_names(run_dir):
        return f"interrupted before the first checkpoint of {run_dir}: start the run again"
    return f"interrupted; continue from the latest checkpoint with: {resume_command(run_dir)}"


# ---------------------------------------------------------------- resources


def check_gpu_request(cfg: Config) -> None:
    """`use_gpu` in-process needs CUDA here; it must not fall back to the CPU silently."""
    import torch

    if cfg.scaling.use_gpu and cfg.scaling.num_workers == 0 and not torch.cuda.is_available():
        raise ResourceError("scaling.use_gpu=true with scaling.num_workers=0 trains in this process, and this "
                            "host has no CUDA GPU (torch.cuda.is_available() is False): set "
                            "scaling.use_gpu=false, or run on a GPU host")


def worker_resources(cfg: Config) -> dict[str, float]:
    return {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1.0} if cfg.scaling.use_gpu else {})}


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items())) or "nothing"


def cluster_shortfall(cfg: Config, total: dict[str, float], nodes: list[dict[str, float]]) -> list[str]:
    """What the request lacks against the cluster's resources (empty when it fits)."""
    per_worker, n = worker_resources(cfg), max(cfg.scaling.num_workers, 1)
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
            f"scaling asks for more than the cluster has ({_fmt(total)}): {'; '.join(problems)}. Lower "
            "scaling.num_workers / scaling.cpus_per_worker (or set scaling.use_gpu=false), or, on an "
            "autoscaling cluster that will add nodes, set scaling.wait_for_resources_s=<seconds>")


def start_timeout_s(cfg: Config) -> float:
    """Seconds one worker-group start may wait for its resources (Ray Train's env setting)."""
    if cfg.scaling.wait_for_resources_s > 0:
        return cfg.scaling.wait_for_resources_s
    return float(USER_START_TIMEOUT_S or DEFAULT_START_TIMEOUT_S)


# The user's own setting, if any, read before this module sets it per run.
USER_START_TIMEOUT_S = os.environ.get(WORKER_GROUP_START_TIMEOUT_ENV, "")


def init_ray() -> None:
    """Attach to RAY_ADDRESS (set by `ray job submit`, or `auto` on a head node); without it,
    start a private local instance, never another user's Ray on the same host (as
    jobs/tune.py). Its dashboard port is chosen here and handed to its processes: Ray
    Train's placement-group cleaner looks the cluster up through it, and by auto-detection
    fails with "Found multiple active Ray instances" on a shared host."""
    import socket

    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.WARNING)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(address="local", dashboard_port=port, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})


def make_torch_trainer(cfg: Config, ds: PreparedDataset, run_dir: RunDir, callbacks: list[Any] | None = None) -> Any:
    """The TorchTrainer of a run: its workers, checkpoints, failure policy and train shards."""
    import ray
    from ray.train.torch import TorchTrainer

    # The V2 classes that `ray.train` exports at run time (its static types are V1's).
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    for key, value in RAY_TRAIN_FAST_ENV.items():
        os.environ.setdefault(key, value)  # a local Ray started below inherits them
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI colour codes in redirected output
    # Ray Train reads it when fit() starts its controller; each start attempt waits this long.
    os.environ[WORKER_GROUP_START_TIMEOUT_ENV] = f"{start_timeout_s(cfg):g}"
    if not ray.is_initialized():
        init_ray()
    check_cluster_fits(cfg)
    select = f"valid/{cfg.eval.select_metric}"
    return TorchTrainer(
        train_loop_per_worker,  # type: ignore[arg-type]
        train_loop_config=loop_config(cfg, ds, run_dir),
        scaling_config=ScalingConfig(num_workers=max(cfg.scaling.num_workers, 1), use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker={"CPU": cfg.scaling.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.scaling.use_gpu else {})}),
        run_config=RunConfig(  # type: ignore[arg-type]
            name=storage.name_of(run_dir), storage_path=storage.parent_of(run_dir), callbacks=callbacks,
            # The latest checkpoint is always kept too (resume); num_to_keep keeps the best.
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=select,
                                               checkpoint_score_order="max"),
            # controller_failure_limit: worker-group starts that time out are retried as
            # often as worker deaths, not for ever (Ray's default).
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures,
                                         controller_failure_limit=cfg.scaling.max_failures),
            # ERROR: a failed run is summed up in one line by `failure_message`, not by
            # Ray's warnings with tracebacks for every rank and retry.
            logging_config=LoggingConfig(log_level="ERROR"),
        ),
    )


def fit(trainer: Any, cfg: Config | None = None, run_dir: RunDir | None = None) -> dict[str, Any]:
    """Rank 0's return value of a finished fit; TrainingFailed, one line, if it failed
    (with `cfg` and `run_dir`; Ray's own error otherwise)."""
    from ray.train import ControllerError, WorkerGroupError

    try:
        result = trainer.fit()
    except SystemExit:
        # Ray Train's own SIGINT handler (main thread) aborts the run gracefully, then calls
        # sys.exit(0) from inside fit(): it is a Ctrl-C, not a finished run.
        raise KeyboardInterrupt from None
    except (WorkerGroupError, ControllerError) as err:
        if cfg is None or run_dir is None:
            raise
        raise TrainingFailed(failure_message(err, cfg, run_dir)) from None
    if result.error is not None:
        raise result.error
    return result.return_value or {}


def failure_message(err: Exception, cfg: Config, run_dir: RunDir) -> str:
    """One line: what failed, and how to go on (`--resume` when a checkpoint exists)."""
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    cause = getattr(err, "controller_failure", None)
    if isinstance(err, ControllerError) and isinstance(cause, WorkerGroupStartupTimeoutError):
        return start_timeout_message(cfg)
    what = worker_failure_summary(err) if hasattr(err, "worker_failures") else first_line(cause or err)
    tries = f"{cfg.scaling.max_failures} restart(s) (scaling.max_failures) used up"
    if checkpoint_names(run_dir):
        return f"training failed: {what}; {tries}; continue from the latest checkpoint with: {resume_command(run_dir)}"
    return f"training failed: {what}; {tries}; no checkpoint was written, start the run again"


def start_timeout_message(cfg: Config) -> str:
    total, free = cluster_cpu_gpu("total"), cluster_cpu_gpu("free")
    n = max(cfg.scaling.num_workers, 1)
    return (f"the worker group did not start: it waited {start_timeout_s(cfg):g}s per attempt "
            f"({cfg.scaling.max_failures + 1} attempt(s)) for {n} workers × {_fmt(worker_resources(cfg))}; "
            f"the cluster has {_fmt(total)}, free now {_fmt(free)} (the rest is held by other jobs or "
            "leftover placement groups: `ray list placement-groups`). Free them, lower scaling.num_workers / "
            "scaling.cpus_per_worker, or raise scaling.wait_for_resources_s on a cluster that is growing")


def first_line(err: BaseException) -> str:
    """An exception in one line: its last `Type: message` line (a worker's error carries its
    traceback), else its first line, cut to 300 characters."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    error_lines = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", line)]
    text = error_lines[-1] if error_lines else lines[0] if lines else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def worker_failure_summary(err: Exception) -> str:
    """The rank that failed first and how; a rank that died takes precedence over the
    collective errors its death caused on the others."""
    failures = getattr(err, "worker_failures", {}) or {}

    def died(e: BaseException) -> bool:  # the process is gone (killed, crashed, OOM), not an exception
        cause = getattr(e, "health_check_failure", e)
        return "ActorDied" in type(cause).__name__ or "actor died" in str(cause).lower()

    ranks = sorted(failures, key=lambda r: (not died(failures[r]), r))
    if not ranks:
        return first_line(err)
    rank = ranks[0]
    what = "died" if died(failures[rank]) else f"raised {first_line(failures[rank])}"
    others = f" (and {len(ranks) - 1} other rank(s) failed with it)" if len(ranks) > 1 else ""
    return f"worker rank {rank} {what}{others}"


def finish_run(cfg: Config, run_dir: RunDir, out: dict[str, Any], wall: float) -> TrainingResult:
    path = file_in(run_dir, METRICS_FILE)
    history = read_metrics(storage.read_text(path)) if storage.exists(path) else []
    best = out.get("best") or {}
    valid = {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("valid/")}
    test = {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("test/")}
    final = {"best_epoch": out.get("best_epoch", -1), "epochs_run": out.get("epochs_run", 0),
             "select_metric": cfg.eval.select_metric,
             "test_masking": "train+valid" if cfg.eval.mask_valid_at_test else "train",
             "valid": valid, "test": test, "wall_time_s": wall,
             "replicas_in_sync": len({json.dumps(f, sort_keys=True) for f in out.get("replica_fingerprints", [])}) <= 1}
    storage.write_text(file_in(run_dir, FINAL_METRICS_FILE), json.dumps(final, indent=2))
    if history:
        png = plot_training_curves(history, title=storage.name_of(run_dir))
        storage.write_bytes(file_in(run_dir, CURVES_FILE), png)
    names = [f"{m}@{k}" for k in cfg.eval.ks for m in ("recall", "ndcg")]
    print(f"\n[ld4mrec] best epoch {final['best_epoch']} of {final['epochs_run']} "
          f"(selected on valid {cfg.eval.select_metric}); {wall:.0f}s")
    print(format_table(["split", *names], [[s, *[d.get(n, float('nan')) for n in names]]
                                           for s, d in (("valid", valid), ("test", test))]))
    print(f"[ld4mrec] outputs in {run_dir}: config.yaml, metrics.jsonl, final_metrics.json, "
          "curves.png, best_model.pt", flush=True)
    return TrainingResult(run_dir, final["best_epoch"], valid, test, final["epochs_run"], wall,
                          out.get("replica_fingerprints", []))
