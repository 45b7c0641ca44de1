"""The per-worker training loop: Algorithm 1 of the paper, on one rank.

Shapes: B users per rank per step, I items, R the rank's users (partition.py).
Read `train_loop_per_worker` top to bottom: set up (data of this rank's users, model,
optimizers, the state to resume from), then per epoch the minibatch steps of Algorithm 1
(`train_epoch` → `step.train_step`), an evaluation that selects on valid, and a report
that writes the run directory and (under Ray Train) a checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from data_pipeline import storage
from data_pipeline.dataset import open_dataset
from ld4mrec_dist import dist
from ld4mrec_dist.config import Config, config_from_dict
from ld4mrec_dist.console import LINES, EpochProgress
from ld4mrec_dist.eval.evaluator import EvalData, eval_data, evaluate_ranking
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.partition import read_rank_rows
from ld4mrec_dist.rows import RowStore, epoch_order, torch_minibatches
from ld4mrec_dist.run_dir import BEST_MODEL_FILE, rewrite_metrics, write_vouched
from ld4mrec_dist.sampler import SamplerHistory
from ld4mrec_dist.timing import PieceTimer
from ld4mrec_dist.tracking import Tracker
from ld4mrec_dist.train.checkpoint import (
    check_compatible,
    load_checkpoint,
    quiet_report_logs,
    restart_point,
    state_bytes,
)
from ld4mrec_dist.train.context import RayTrainWorker, WorkerContext, worker_context
from ld4mrec_dist.train.engine import Engine, digest
from ld4mrec_dist.train.faults import with_injected_fault
from ld4mrec_dist.train.lr_rule import lr_at_step, scaled_lr, set_lr
from ld4mrec_dist.train.rank_model import build_rank, data_placement
from ld4mrec_dist.train.state import LoopState, best_model_state, checkpoint_state, restored_loop


@dataclass(frozen=True)
class WorkerInput:
    """What the driver hands every rank (as a plain dict: Ray Train's `train_loop_config`)."""

    cfg: dict[str, Any]  # the run's config, `config_to_dict`
    dataset: str  # the prepared dataset's location, verified by the driver
    run_dir: str  # a local path or an object-store URI
    strategy: str  # `scaling.strategy` as the driver resolved it (`auto` included), for every rank
    resume_from: str = ""  # the checkpoint a --resume verified (used when Ray Train hands over none)
    progress: str = LINES  # how the driver's console shows progress inside an epoch (console.py)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> WorkerInput:
        return cls(**config)


@dataclass
class Run:
    """One rank's run: its config, data, model and state, built by `setup`."""

    cfg: Config
    run_dir: str
    manifest_sha256: str
    worker: WorkerContext
    model: LD4MRec
    engine: Engine  # data- or item-parallel: the step, the ranking, the full state
    sampler: SamplerHistory
    state: LoopState
    store: RowStore  # this rank's train rows
    n_rows: int  # rows per epoch on every rank: the smallest rank's count
    evals: dict[str, EvalData]  # this rank's valid and test users
    tracker: Tracker  # rank 0's TensorBoard writer (a no-op elsewhere)
    progress_mode: str  # how the driver's console shows progress inside an epoch

    @property
    def is_rank0(self) -> bool:
        return self.worker.rank == 0


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    run = setup(WorkerInput.from_dict(config), worker_context())
    try:
        return train_epochs(run)
    finally:
        run.tracker.close()


def train_epochs(run: Run) -> dict[str, Any]:
    cfg, state = run.cfg, run.state
    for epoch in range(state.epoch, cfg.train.epochs):
        epoch_row = train_epoch(run, epoch)  # Alg. 1 l.2-13 over this rank's users
        state.epoch = epoch + 1
        if state.epoch % cfg.train.eval_every and state.epoch != cfg.train.epochs:
            continue
        row, improved = evaluate_and_select(run, epoch_row)
        report(run, row, improved)
        if state.bad_evals >= cfg.train.patience:
            if run.is_rank0:
                print(f"[ld4mrec] early stop at epoch {state.epoch}: no better valid "
                      f"{cfg.eval.select_metric} for {cfg.train.patience} evaluations", flush=True)
            break
    return {"best_epoch": state.best_epoch, "best": state.best_row(), "epochs_run": state.epoch,
            "replica_fingerprints": dist.all_gather_objects(replica_fingerprint(run))}


# ---------------------------------------------------------------- the pieces, in loop order


def setup(given: WorkerInput, worker: WorkerContext) -> Run:
    """This rank's data, model, optimizers and loop state (restored when resuming)."""
    cfg = config_from_dict(given.cfg)
    quiet_report_logs()  # one console line per epoch, not one per Ray report
    run_dir = given.run_dir
    ds = open_dataset(given.dataset, verify="sizes")  # the driver hashed it; here only a cheap listing
    # The one read of this rank's users: also what the distributed SVD fits V_k from.
    rows = read_rank_rows(ds, *data_placement(cfg, worker, given.strategy))
    model, engine = build_rank(cfg, ds, run_dir, worker, given.strategy, rows.train)
    sampler, state = SamplerHistory.empty(model.schedule.steps, cfg.diffusion), LoopState()
    saved = state_to_start_from(given, worker, run_dir)
    if saved is not None:
        check_compatible(saved, given.cfg, ds.manifest_sha256)
        engine.load_state(saved)
        sampler, state = restored_loop(saved)
        if worker.rank == 0:
            print(f"[ld4mrec] resumed at epoch {state.epoch} (step {state.global_step})", flush=True)
    if worker.rank == 0:
        rewrite_metrics(run_dir, state.history)
        if cfg.train.lr_scaling != "none":
            print(f"[ld4mrec] learning rate {scaled_lr(cfg.train, engine.data_world):.3g}: train.lr={cfg.train.lr:g} "
                  f"at {cfg.train.lr_reference_batch} users per step, scaled ({cfg.train.lr_scaling}) to "
                  f"{cfg.train.batch_size} × {engine.data_world} ranks", flush=True)
    assert (engine.data_rank, engine.data_world) == data_placement(cfg, worker, given.strategy)
    store = rows.train_store()
    n_rows = dist.all_reduce_min_int(len(store), worker.device)  # equal step counts: DDP hangs otherwise
    if n_rows == 0:
        raise RuntimeError(f"a worker received no train rows from {ds.path}: use fewer workers "
                           f"than users ({ds.n_users})")
    tracker = Tracker(run_dir, worker.rank == 0, resume_step=state.global_step)
    return Run(cfg, run_dir, ds.manifest_sha256, worker, model, engine, sampler, state, store, n_rows,
               eval_data(rows, cfg.eval.mask_valid_at_test), tracker, given.progress)


def state_to_start_from(given: WorkerInput, worker: WorkerContext, run_dir: str) -> dict[str, Any] | None:
    """The checkpoint this attempt starts from: Ray's latest (after a restart or a resume),
    else the one a --resume verified in the driver (Ray's snapshot may not list it); and
    the newest intact one on disk instead when it is newer (rank 0 looks, every rank loads
    the same one)."""
    saved = worker.saved_state() or (load_checkpoint(given.resume_from) if given.resume_from else None)
    if not worker.checkpoints:
        return saved
    handed = int(saved.get("epoch", -1)) if saved is not None else -1
    point = restart_point(run_dir, handed) if worker.rank == 0 else None
    path = dist.all_gather_objects(point.path if point else "")[0]
    if not path:
        return saved
    if worker.rank == 0:
        print(f"[ld4mrec] restarting from {storage.name_of(path)} (epoch {point.epoch if point else '?'}), "
              f"the newest intact checkpoint, not epoch {handed}'s", flush=True)
    return load_checkpoint(path)


def train_epoch(run: Run, epoch: int) -> dict[str, float]:
    """One epoch of minibatch steps; its loss (mean over every rank's users) and timings."""
    cfg, state, device = run.cfg, run.state, run.worker.device
    t0 = time.perf_counter()
    run.model.train()
    run.engine.start_epoch(epoch)
    timer = PieceTimer()
    loss_sum = torch.zeros(2, dtype=torch.float64)  # Σ loss·B, Σ B
    order = epoch_rows(run, epoch)
    batches = torch_minibatches(run.store, order, cfg.train.batch_size, run.n_rows, device, timer)
    autocast = device.type == "cuda" and cfg.scaling.bf16
    n_steps = -(-run.n_rows // cfg.train.batch_size)
    progress = EpochProgress(epoch, n_steps, run.progress_mode, run.is_rank0,
                             isinstance(run.worker, RayTrainWorker))
    for users_B, rows_BI in with_injected_fault(batches, cfg.train.fail_at_step, state.global_step, run.run_dir):
        t_step, lr = time.perf_counter(), lr_at_step(cfg.train, run.engine.data_world, state.global_step)
        set_lr(run.engine.opts, lr)
        loss = run.engine.step(run.sampler, users_B, rows_BI, autocast, timer)
        loss_value = loss.item() if run.engine.counts_users else None
        if loss_value is not None:
            loss_sum += torch.tensor([loss_value * len(users_B), len(users_B)], dtype=torch.float64)
        state.global_step += 1
        run.tracker.step(state.global_step, loss_value, lr, time.perf_counter() - t_step)
        progress.update()
    progress.close()
    run.tracker.pieces(state.global_step, timer.total, progress.done)
    loss_sum = dist.all_reduce_sum(loss_sum.to(device)).cpu()
    seconds = time.perf_counter() - t0
    return {"loss": loss_sum[0].item() / max(loss_sum[1].item(), 1.0), "train_time_s": seconds,
            "users_per_s": loss_sum[1].item() / max(seconds, 1e-9), "data_time_s": timer.seconds("data"),
            "sync_time_s": timer.seconds("sync dense", "sync z_in", "history")}


def epoch_rows(run: Run, epoch: int) -> np.ndarray:
    """The order in which this rank steps through its train rows in an epoch, seeded by its
    data rank: the W_item ranks of an item group hold the same users and must form the same
    batches (their conditions', FC_in's and the loss's all-reduces sum over one batch of
    users; seeded by the world rank, each rank shuffled its own and the sums mixed users)."""
    return epoch_order(len(run.store), run.cfg.train.seed, epoch, run.engine.data_rank)


def evaluate_and_select(run: Run, epoch_row: dict[str, float]) -> tuple[dict[str, Any], bool]:
    """Valid metrics, model selection on them, and test at a new best (or always, if asked)."""
    cfg, state, device = run.cfg, run.state, run.worker.device
    t0 = time.perf_counter()
    run.model.eval()
    rank = run.engine.rank_fn()
    valid = evaluate_ranking(rank, run.evals["valid"], cfg.eval.ks, cfg.eval.batch_size, device)
    improved = state.select(valid[cfg.eval.select_metric])
    test = (evaluate_ranking(rank, run.evals["test"], cfg.eval.ks, cfg.eval.batch_size, device)
            if improved or cfg.eval.test_every_eval else {})
    row = {"epoch": state.epoch, "step": state.global_step, **epoch_row, "eval_time_s": time.perf_counter() - t0,
           **{f"valid/{k}": v for k, v in valid.items()}, **{f"test/{k}": v for k, v in test.items()},
           "best_epoch": state.best_epoch}
    state.history.append(row)
    return row, improved


def report(run: Run, row: dict[str, Any], improved: bool) -> None:
    """Rank 0 prints the epoch's line and writes the run directory; every rank reports."""
    # Gathering an item-parallel state is a collective: every rank takes part when it is needed.
    full = run.engine.full_state() if improved or run.worker.checkpoints else {}
    if run.is_rank0:
        print(progress_line(row, run.cfg), flush=True)
        run.tracker.evaluation(row, lr_at_step(run.cfg.train, run.engine.data_world, run.state.global_step))
        rewrite_metrics(run.run_dir, run.state.history)  # whole-file writes: object stores cannot append
        if improved:
            best = best_model_state(full, run.model, run.cfg, run.manifest_sha256, row)
            write_vouched(run.run_dir, BEST_MODEL_FILE, state_bytes(best))
    run.worker.report(row, lambda: checkpoint_state(full, run.model, run.sampler, run.state, run.cfg,
                                                    run.manifest_sha256))


# ---------------------------------------------------------------- helpers


def replica_fingerprint(run: Run) -> dict[str, str]:
    """sha256 of each replicated state: equal on every rank when the collectives work."""
    return {"sampler": digest([run.sampler.table_TH, run.sampler.counts_T]), "z_in": digest([run.model.z_in.weight]),
            "cnet": run.engine.cnet_digest()}


def progress_line(row: dict[str, Any], cfg: Config) -> str:
    sel = cfg.eval.select_metric
    test = f"{row['test/' + sel]:.4f}" if "test/" + sel in row else "  –   "
    return (f"[ld4mrec] epoch {row['epoch']:4d}  loss {row['loss']:.5f}  "
            f"valid {sel} {row['valid/' + sel]:.4f}  test {sel} {test}  "
            f"best@{row['best_epoch']}  {row['users_per_s']:.0f} users/s  "
            f"train {row['train_time_s']:.1f}s eval {row['eval_time_s']:.1f}s")
