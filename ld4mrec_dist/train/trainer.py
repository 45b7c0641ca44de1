"""The driver side of a training run: dataset, run directory, launch, final outputs.

`run_training(cfg)` resolves the dataset (preparing the built-in synthetic one when no
path is given), fits the randomized-SVD collaborative encoder once (unless the ranks fit
it: `model.svd_solver=distributed`), resolves the gradient
strategy once, launches the ranks (train/launch.py: in this process, or on
`cfg.scaling.num_workers` Ray Train workers with PyTorch DDP, gloo on CPU and NCCL on GPU)
and writes final_metrics.json, curves.png and a summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from data_pipeline import storage
from data_pipeline.dataset import PreparedDataset, open_dataset
from data_pipeline.errors import DataError
from ld4mrec_dist import tracking
from ld4mrec_dist.config import Config, config_to_dict, config_to_yaml, load_config, metric_names
from ld4mrec_dist.console import config_line, progress_mode, quiet_ray_console
from ld4mrec_dist.encoders import svd_item_factors
from ld4mrec_dist.model import select_modalities
from ld4mrec_dist.partition import check_ranks_have_rows
from ld4mrec_dist.report import format_table, modality_lines, plot_training_curves, read_metrics
from ld4mrec_dist.run_dir import (
    CONFIG_FILE,
    CURVES_FILE,
    FINAL_METRICS_FILE,
    ITEM_FACTORS_FILE,
    METRICS_FILE,
    RunDir,
    anchor_job_paths,
    file_in,
    job_path_help,
    read_item_factors,
    resolve_dataset,
    resolve_run_dir,
    write_item_factors,
    write_vouched,
)
from ld4mrec_dist.scaling_model import describe_choice, resolve_strategy
from ld4mrec_dist.train import launch
from ld4mrec_dist.train.checkpoint import (
    CheckpointError,
    ResumePoint,
    check_compatible,
    checkpoint_names,
    choose_resume_checkpoint,
    load_checkpoint,
    point_ray_snapshot_at,
    prune_checkpoints,
)
from ld4mrec_dist.train.failures import TrainingInterrupted, interrupted_message
from ld4mrec_dist.train.loop import WorkerInput
from ld4mrec_dist.train.resources import check_gpu_request, rank_count, runs_in_process


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


@dataclass(frozen=True)
class PreparedRun:
    """A run ready for its ranks: dataset verified, run directory holding config.yaml and V_k."""

    ds: PreparedDataset
    run_dir: RunDir
    worker: WorkerInput  # what every rank receives


def run_training(cfg: Config) -> TrainingResult:
    """Prepare, train on Ray Train (or in-process with 0 workers), write the outputs."""
    t0 = time.perf_counter()
    quiet_ray_console()  # before Ray is imported: its worker-line prefix is read then
    prepared = prepare_run(cfg)
    try:
        out = launch.train(cfg, prepared.run_dir, prepared.worker)
    except KeyboardInterrupt:
        raise TrainingInterrupted(interrupted_message(cfg, prepared.run_dir)) from None
    return finish_run(cfg, prepared.run_dir, out, time.perf_counter() - t0)


def prepare_run(cfg: Config) -> PreparedRun:
    """Dataset and run directory ready for workers: config.yaml and V_k written, the
    strategy resolved (`auto` once, here) and the checkpoint of a --resume verified."""
    given_data_path = cfg.data.path
    anchor_job_paths(cfg)
    print(config_line(cfg), flush=True)
    check_gpu_request(cfg)
    try:
        ds = open_dataset(resolve_dataset(cfg), verify="full")  # sizes, shapes, accounting, sha256 (cached)
    except DataError as err:
        if cfg.data.path == given_data_path:
            raise
        raise DataError(job_path_help("data.path", given_data_path, cfg.data.path, str(err))) from None
    strategy, _ = resolve_strategy(cfg, ds.n_items, rank_count(cfg), ds.feature_dims)
    check_ranks_have_rows(ds, cfg, rank_count(cfg), strategy)  # before a run directory or any worker
    run_dir = resolve_run_dir(cfg, ds)
    resume_from = check_resumable(run_dir, cfg, ds).path if cfg.run.resume else ""
    write_vouched(run_dir, CONFIG_FILE, config_to_yaml(cfg).encode())
    item_factors_for_run(ds, cfg, run_dir)
    print(f"[ld4mrec] dataset {ds.location} ({ds.n_users} users × {ds.n_items} items, "
          f"modalities: {', '.join(ds.modalities) or 'none'}); run directory {run_dir}", flush=True)
    print("\n".join(modality_lines(ds.manifest, select_modalities(cfg.model.modalities, ds.modalities),
                                   cfg.model.ablation)), flush=True)
    print(tracking.startup_line(run_dir), flush=True)
    print(describe_choice(cfg, ds.n_items, rank_count(cfg), ds.feature_dims), flush=True)
    worker = WorkerInput(config_to_dict(cfg), ds.location, str(run_dir), strategy, resume_from, progress_mode())
    return PreparedRun(ds, run_dir, worker)


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
    saved = file_in(run_dir, CONFIG_FILE)
    try:
        return storage.is_file(saved) and runs_in_process(load_config(saved))
    except Exception:  # noqa: BLE001 - an unreadable config is reported elsewhere
        return False


def item_factors_for_run(ds: PreparedDataset, cfg: Config, run_dir: RunDir) -> None:
    """V_k of the train matrix, fitted once per run in the driver and shared by file; with
    `model.svd_solver=distributed` the ranks fit it (train/rank_model.py) and the driver
    never reads the whole train matrix."""
    path = file_in(run_dir, ITEM_FACTORS_FILE)
    if storage.exists(path):
        read_item_factors(run_dir)  # a resume: verified here, before any worker reads it
        return
    if cfg.model.svd_solver == "distributed":
        return
    t0 = time.perf_counter()
    v_IK = svd_item_factors(ds.split_csr("train"), cfg.model.svd_rank, cfg.train.seed)
    write_item_factors(run_dir, v_IK)
    k = v_IK.shape[1]
    clamped = (f"; model.svd_rank={cfg.model.svd_rank} exceeds min(users, items) − 1" if k < cfg.model.svd_rank
               else "")
    print(f"[ld4mrec] randomized SVD (k={k}{clamped}) of the train matrix "
          f"{ds.n_users}×{ds.n_items}: {time.perf_counter() - t0:.1f}s", flush=True)


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
    if not runs_in_process(cfg):
        prune_checkpoints(run_dir, final["best_epoch"])  # best + latest, also after a restart
    if history:
        png = plot_training_curves(history, title=storage.name_of(run_dir))
        storage.write_bytes(file_in(run_dir, CURVES_FILE), png)
    names = metric_names(cfg.eval.ks, by_cutoff=True)
    # The table is the last thing a run prints.
    print(f"[ld4mrec] outputs in {run_dir}: config.yaml, metrics.jsonl, final_metrics.json, "
          "curves.png, best_model.pt, TensorBoard events")
    print(f"\n[ld4mrec] best epoch {final['best_epoch']} of {final['epochs_run']} "
          f"(selected on valid {cfg.eval.select_metric}); {wall:.0f}s")
    print(format_table(["split", *names], [[s, *[d.get(n, float('nan')) for n in names]]
                                           for s, d in (("valid", valid), ("test", test))]), flush=True)
    return TrainingResult(run_dir, final["best_epoch"], valid, test, final["epochs_run"], wall,
                          out.get("replica_fingerprints", []))
