"""Launching the ranks of a prepared run: `train` runs them in this process or on Ray Train
workers (`resources.runs_in_process` decides), and hands back rank 0's return value.

Every rank receives the same `WorkerInput` (train/loop.py); under Ray Train it travels as
the TorchTrainer's `train_loop_config`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from data_pipeline import storage
from ld4mrec_dist.config import Config
from ld4mrec_dist.console import quiet_ray_console
from ld4mrec_dist.run_dir import RunDir
from ld4mrec_dist.train.console import RunConsole, route_ray_output, show_unseen_epochs
from ld4mrec_dist.train.failures import TrainingFailed, failure_message
from ld4mrec_dist.train.loop import WorkerInput, train_loop_per_worker
from ld4mrec_dist.train.node_loss import RestartGate, ray_callback
from ld4mrec_dist.train.resources import (
    WORKER_GROUP_START_TIMEOUT_ENV,
    check_cluster_fits,
    rank_count,
    runs_in_process,
    start_timeout_s,
)

# Ray Train's per-fit() start-up is 20-30 s on 2 cores (docs/design.md §8); the first three cut it
# to ~20 s. The print patch tees each worker print to stdout *and* Train's logger, which
# shows every progress line twice on the console.
RAY_TRAIN_FAST_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


def train(cfg: Config, run_dir: RunDir, worker: WorkerInput) -> dict[str, Any]:
    """Rank 0's return value of the training loop, run in this process or on Ray Train."""
    if runs_in_process(cfg):
        return train_loop_per_worker(worker.as_dict())
    torch_trainer = make_torch_trainer(cfg, run_dir, worker)
    console = open_console(run_dir)
    try:
        return fit(torch_trainer, cfg, run_dir, console)
    except TrainingFailed:
        release_ray()  # nothing of Ray's may follow the run's last line
        raise
    finally:
        if console is not None:
            console.close()


# Whether this process started or attached Ray itself (`init_ray`), so it owns the console.
OWN_RAY = False


def open_console(run_dir: RunDir) -> RunConsole | None:
    """The run's console when this process started or attached Ray itself (the CLI, a
    notebook): the project's lines on the console, Ray's and the workers' other output in
    the run's log file. None under a caller's Ray (tests, sweeps): its output is theirs."""
    if not OWN_RAY:
        return None
    console = RunConsole(run_dir)
    return console if route_ray_output(console) else None


def release_ray() -> None:
    """Disconnect from Ray when this process connected (the cluster itself runs on)."""
    import ray

    global OWN_RAY
    if OWN_RAY and ray.is_initialized():
        ray.shutdown()
        OWN_RAY = False


def init_ray() -> None:
    """Attach to RAY_ADDRESS (set by `ray job submit`, or `auto` on a head node); without it,
    start a private local instance, never another user's Ray on the same host (as
    jobs/tune.py). Its dashboard port is chosen here and handed to its processes: Ray
    Train's placement-group cleaner looks the cluster up through it, and by auto-detection
    fails with "Found multiple active Ray instances" on a shared host."""
    import socket

    import ray

    global OWN_RAY
    OWN_RAY = True
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.WARNING)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(address="local", dashboard_port=port, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})


def make_torch_trainer(cfg: Config, run_dir: RunDir, worker: WorkerInput, callbacks: list[Any] | None = None) -> Any:
    """The TorchTrainer of a run: its workers, checkpoints, failure policy and train shards."""
    import ray

    # The V2 classes that `ray.train` exports at run time (its static types are V1's).
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    from ld4mrec_dist.train.failure_policy import LD4MRecTorchTrainer

    for key, value in RAY_TRAIN_FAST_ENV.items():
        os.environ.setdefault(key, value)  # a local Ray started below inherits them
    quiet_ray_console()  # no worker-line prefix, no ANSI colour codes in redirected output
    # Ray Train reads it when fit() starts its controller; each start attempt waits this long.
    os.environ[WORKER_GROUP_START_TIMEOUT_ENV] = f"{start_timeout_s(cfg):g}"
    if not ray.is_initialized():
        init_ray()
    check_cluster_fits(cfg)
    select = f"valid/{cfg.eval.select_metric}"
    return LD4MRecTorchTrainer(  # TorchTrainer, but a disk error is not retried
        train_loop_per_worker,  # type: ignore[arg-type]
        train_loop_config=worker.as_dict(),
        scaling_config=ScalingConfig(num_workers=rank_count(cfg), use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker={"CPU": cfg.scaling.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.scaling.use_gpu else {})}),
        run_config=RunConfig(  # type: ignore[arg-type]
            name=storage.name_of(run_dir), storage_path=storage.parent_of(run_dir),
            # The gate: where each rank runs, and no restart that waits for a lost node in vain.
            callbacks=[*(callbacks or []), ray_callback(RestartGate(cfg, run_dir))],
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


def fit(trainer: Any, cfg: Config | None = None, run_dir: RunDir | None = None,
        console: RunConsole | None = None) -> dict[str, Any]:
    """Rank 0's return value of a finished fit; TrainingFailed, one line, if it failed
    (with `cfg` and `run_dir`; Ray's own error otherwise). With a `console`, the full
    error goes to the run's log file, and epoch lines that never reached the console
    (rank 0 lost with its node) are shown from metrics.jsonl first."""
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
        if console is not None:
            console.log(f"[ld4mrec] the run failed with:\n{err}")
            show_unseen_epochs(console, cfg, run_dir)
        raise TrainingFailed(failure_message(err, cfg, run_dir)) from None
    if result.error is not None:
        raise result.error
    return result.return_value or {}
