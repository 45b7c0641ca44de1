"""The driver side of a training run: dataset, run directory, Ray Train, final outputs.

`run_training(cfg)` resolves the dataset (preparing the built-in synthetic one when no
path is given), fits the randomized-SVD collaborative encoder once, launches
`train_loop_per_worker` on `cfg.scaling.num_workers` Ray Train workers (PyTorch DDP:
gloo on CPU, NCCL on GPU) and writes final_metrics.json, curves.png and a summary.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from data_pipeline import storage
from data_pipeline.dataset import PreparedDataset, open_dataset
from ld4mrec_dist.config import Config, config_to_dict, config_to_yaml
from ld4mrec_dist.encoders import svd_item_factors
from ld4mrec_dist.report import format_table, plot_training_curves, read_metrics
from ld4mrec_dist.train.checkpoint import CheckpointError, check_compatible, load_checkpoint
from ld4mrec_dist.train.checkpoint import META_FILE
from ld4mrec_dist.train.loop import ITEM_FACTORS_FILE, METRICS_FILE, train_loop_per_worker

# Ray Train's per-fit() start-up is 20-30 s on 2 cores (RAY_NOTES); the first three cut it
# to ~20 s. The print patch tees each worker print to stdout *and* Train's logger, which
# shows every progress line twice on the console.
RAY_TRAIN_FAST_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


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


RunDir = Union[Path, str]  # a local directory, or an object-store URI string


def run_location(location: str) -> RunDir:
    """Path for a local location (so callers may use `/`), the URI string otherwise."""
    return location if storage.is_uri(location) else Path(location)


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


def latest_checkpoint_dir(run_dir: RunDir) -> Optional[RunDir]:
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


def check_resumable(run_dir: RunDir, cfg: Config, ds: PreparedDataset) -> None:
    """Fail in the driver, with a clear message, before workers would fail on the same."""
    latest = latest_checkpoint_dir(run_dir)
    if latest is None:
        raise CheckpointError(f"--resume {run_dir}: no complete checkpoint in it "
                              "(the run stopped before its first evaluation); start a new run")
    check_compatible(load_checkpoint(latest), config_to_dict(cfg), ds.manifest_sha256)


def item_factors_for_run(ds: PreparedDataset, cfg: Config, run_dir: RunDir) -> None:
    """V_k of the train matrix, fitted once per run in the driver and shared by file."""
    path = storage.join(run_dir, ITEM_FACTORS_FILE)
    if storage.exists(path):
        return
    t0 = time.perf_counter()
    v_IK = svd_item_factors(ds.split_csr("train"), cfg.model.svd_rank, cfg.train.seed)
    storage.write_bytes(path, storage.bytes_of_npy(np.ascontiguousarray(v_IK, dtype=np.float32)))
    print(f"[ld4mrec] randomized SVD (k={v_IK.shape[1]}) of the train matrix "
          f"{ds.n_users}×{ds.n_items}: {time.perf_counter() - t0:.1f}s", flush=True)


def loop_config(cfg: Config, ds: PreparedDataset, run_dir: RunDir) -> dict[str, Any]:
    return {"cfg": config_to_dict(cfg), "dataset": ds.location, "run_dir": str(run_dir)}


def prepare_run(cfg: Config) -> tuple[PreparedDataset, RunDir]:
    """Dataset and run directory ready for workers: config.yaml and V_k written."""
    ds = open_dataset(resolve_dataset(cfg), verify="full")  # sizes, shapes, accounting, sha256 (cached)
    run_dir = resolve_run_dir(cfg, ds)
    if cfg.run.resume:
        check_resumable(run_dir, cfg, ds)
    storage.write_text(storage.join(run_dir, "config.yaml"), config_to_yaml(cfg))
    item_factors_for_run(ds, cfg, run_dir)
    print(f"[ld4mrec] dataset {ds.location} ({ds.n_users} users × {ds.n_items} items, "
          f"modalities {ds.modalities}); run directory {run_dir}", flush=True)
    return ds, run_dir


def run_training(cfg: Config) -> TrainingResult:
    """Prepare, train on Ray Train (or in-process with 0 workers), write the outputs."""
    t0 = time.perf_counter()
    ds, run_dir = prepare_run(cfg)
    if cfg.scaling.num_workers == 0:
        out = train_loop_per_worker(loop_config(cfg, ds, run_dir))
    else:
        out = fit(make_torch_trainer(cfg, ds, run_dir))
    return finish_run(cfg, run_dir, out, time.perf_counter() - t0)


def make_torch_trainer(cfg: Config, ds: PreparedDataset, run_dir: RunDir, callbacks: Optional[list] = None):
    """The TorchTrainer of a run: its workers, checkpoints, failure policy and train shards."""
    import ray
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    for key, value in RAY_TRAIN_FAST_ENV.items():
        os.environ.setdefault(key, value)  # a local Ray started below inherits them
    if not ray.is_initialized():
        ray.init()  # attaches to RAY_ADDRESS (ray job submit) or starts a local instance
    train_rows = ray.data.read_parquet(ds.split_files("train")).materialize()
    select = f"valid/{cfg.eval.select_metric}"
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(cfg, ds, run_dir),
        scaling_config=ScalingConfig(num_workers=max(cfg.scaling.num_workers, 1), use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker={"CPU": cfg.scaling.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.scaling.use_gpu else {})}),
        run_config=RunConfig(
            name=storage.name_of(run_dir), storage_path=storage.parent_of(run_dir), callbacks=callbacks,
            # The latest checkpoint is always kept too (resume); num_to_keep keeps the best.
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=select,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
        ),
        datasets={"train": train_rows},
    )


def fit(trainer) -> dict[str, Any]:
    """Rank 0's return value of a finished fit; the run's error if it failed."""
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result.return_value or {}


def finish_run(cfg: Config, run_dir: Path, out: dict[str, Any], wall: float) -> TrainingResult:
    path = storage.join(run_dir, METRICS_FILE)
    history = read_metrics(storage.read_text(path)) if storage.exists(path) else []
    best = out.get("best") or {}
    valid = {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("valid/")}
    test = {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("test/")}
    final = {"best_epoch": out.get("best_epoch", -1), "epochs_run": out.get("epochs_run", 0),
             "select_metric": cfg.eval.select_metric,
             "test_masking": "train+valid" if cfg.eval.mask_valid_at_test else "train",
             "valid": valid, "test": test, "wall_time_s": wall,
             "replicas_in_sync": len({json.dumps(f, sort_keys=True) for f in out.get("replica_fingerprints", [])}) <= 1}
    storage.write_text(storage.join(run_dir, "final_metrics.json"), json.dumps(final, indent=2))
    if history:
        png = plot_training_curves(history, title=storage.name_of(run_dir))
        storage.write_bytes(storage.join(run_dir, "curves.png"), png)
    names = [f"{m}@{k}" for k in cfg.eval.ks for m in ("recall", "ndcg")]
    print(f"\n[ld4mrec] best epoch {final['best_epoch']} of {final['epochs_run']} "
          f"(selected on valid {cfg.eval.select_metric}); {wall:.0f}s")
    print(format_table(["split", *names], [[s, *[d.get(n, float('nan')) for n in names]]
                                           for s, d in (("valid", valid), ("test", test))]))
    print(f"[ld4mrec] outputs in {run_dir}: config.yaml, metrics.jsonl, final_metrics.json, "
          "curves.png, best_model.pt", flush=True)
    return TrainingResult(run_dir, final["best_epoch"], valid, test, final["epochs_run"], wall,
                          out.get("replica_fingerprints", []))
