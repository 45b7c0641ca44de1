"""The per-worker training loop: Algorithm 1 of the paper, on one DDP rank.

Shapes: B users per rank per step, I items, T diffusion steps, D hidden width.
Read `train_loop_per_worker` top to bottom: build, restore, then per epoch the
minibatch steps of Algorithm 1 (sample t ~ p_t, forward process, C-Net, weighted loss,
gradient step, history update) and an evaluation that reports and checkpoints.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from data_pipeline import storage
from data_pipeline.dataset import open_dataset
from ld4mrec_dist import dist as sync
from ld4mrec_dist.build import Optimizers, build_model, build_optimizers, dense_parameters, item_factors_of, wrap_cnet
from ld4mrec_dist.config import Config, config_from_dict, config_to_dict
from ld4mrec_dist.eval.evaluator import evaluate, split_eval_data
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.rows import (
    RowStore,
    concat_row_stores,
    epoch_order,
    minibatches,
    rows_from_arrow,
    rows_with_items,
    to_torch_csr,
)
from ld4mrec_dist.run_dir import BEST_MODEL_FILE, FAULT_MARKER, ITEM_FACTORS_FILE, METRICS_FILE
from ld4mrec_dist.sampler import init_history, step_probabilities, update_history
from ld4mrec_dist.train.checkpoint import (
    check_compatible,
    load_checkpoint,
    quiet_report_logs,
    save_checkpoint,
    state_bytes,
)


@dataclass
class LoopState:
    """Everything that must survive a restart, besides model and optimizer weights."""

    epoch: int = 0  # next epoch to run
    global_step: int = 0
    best_metric: float = -1.0
    best_epoch: int = -1
    bad_evals: int = 0  # evaluations since the last improvement (early-stopping patience)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per evaluation


# ---------------------------------------------------------------- building blocks


def train_rows_of_this_rank(train: sp.csr_matrix, n_items: int) -> RowStore:
    """This rank's shard of the train split: Ray Data's split when running under Ray Train,
    the whole split (`train`) otherwise. Rows are kept in CSR (O(nnz)), reshuffled per epoch."""
    import ray.train

    shard = ray.train.get_dataset_shard("train") if _in_ray_train() else None
    if shard is None:
        return rows_with_items(train)
    stores = [rows_from_arrow(batch, n_items)
              for batch in shard.iter_batches(batch_size=8192, batch_format="pyarrow")]
    return concat_row_stores(stores, n_items)


def _in_ray_train() -> bool:
    try:
        import ray.train

        ray.train.get_context()
        return True
    except Exception:  # noqa: BLE001 - outside a Ray Train worker
        return False


def _device() -> torch.device:
    if _in_ray_train():
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reseed(cfg: Config, epoch: int, device: torch.device) -> torch.Generator:
    """Seed every random stream of an epoch from (seed, epoch, rank): a resume at an epoch
    boundary replays exactly the stream the interrupted run would have drawn."""
    seed = int(np.random.default_rng([cfg.train.seed, epoch, sync.rank()]).integers(2**62))
    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def replica_fingerprint(model: LD4MRec, table: torch.Tensor, counts: torch.Tensor) -> dict[str, str]:
    """sha256 of each replicated state: equal on every rank when the collectives work."""
    def digest(tensors: Iterable[torch.Tensor]) -> str:
        h = hashlib.sha256()
        for x in tensors:
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    return {"sampler": digest([table, counts]), "z_in": digest([model.z_in.weight]),
            "cnet": digest(dense_parameters(model))}


# ---------------------------------------------------------------- checkpoint state


def checkpoint_state(model: LD4MRec, opts: Optimizers, table: torch.Tensor, counts: torch.Tensor,
                     state: LoopState, cfg: Config,
                     manifest_sha256: str) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "item_factors": item_factors_of(model),
        "optimizer": opts[0].state_dict(),
        "zin_optimizer": opts[1].state_dict(),
        "sampler_table": table, "sampler_counts": counts,
        "epoch": state.epoch, "global_step": state.global_step,
        "best_metric": state.best_metric, "best_epoch": state.best_epoch,
        "bad_evals": state.bad_evals, "history": state.history,
        # No RNG state: every stream is reseeded from (seed, epoch, rank) at each epoch
        # start (see `reseed`), so the seed in the config and the epoch restore them.
        "config": config_to_dict(cfg), "manifest_sha256": manifest_sha256,
    }


def restore(model: LD4MRec, opts: Optimizers, saved: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, LoopState]:
    model.load_state_dict(saved["model"])
    opts[0].load_state_dict(saved["optimizer"])
    opts[1].load_state_dict(saved["zin_optimizer"])
    state = LoopState(epoch=saved["epoch"], global_step=saved["global_step"],
                      best_metric=saved["best_metric"], best_epoch=saved["best_epoch"],
                      bad_evals=saved["bad_evals"], history=list(saved["history"]))
    return saved["sampler_table"], saved["sampler_counts"], state


def latest_checkpoint_state() -> dict[str, Any] | None:
    import ray.train

    ckpt = ray.train.get_checkpoint() if _in_ray_train() else None
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return load_checkpoint(d)


# ---------------------------------------------------------------- the loop


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    cfg: Config = config_from_dict(config["cfg"])
    quiet_report_logs()  # one console line per epoch, not one per Ray report
    run_dir = config["run_dir"]  # a local path or an object-store URI
    device = _device()
    is_rank0 = sync.rank() == 0
    autocast = device.type == "cuda" and cfg.scaling.bf16

    # --- build: data, model, optimizers, sampler history
    ds = open_dataset(config["dataset"], verify="sizes")  # the driver hashed it; here only a cheap listing
    item_factors_IK = np.load(io.BytesIO(storage.read_bytes(storage.join(run_dir, ITEM_FACTORS_FILE))))
    model = build_model(cfg, ds, item_factors_IK, device)
    cnet = wrap_cnet(model, device)
    opts = build_optimizers(model, cfg)
    table, counts = init_history(cfg.diffusion.steps, cfg.diffusion.history)
    state = LoopState()

    # Ray's latest checkpoint; else the one a --resume verified in the driver (Ray's snapshot may not list it)
    saved = latest_checkpoint_state() or (load_checkpoint(config['resume_from']) if config.get('resume_from') else None)
    if saved is not None:
        check_compatible(saved, config["cfg"], ds.manifest_sha256)
        table, counts, state = restore(model, opts, saved)
        if is_rank0:
            print(f"[ld4mrec] resumed at epoch {state.epoch} (step {state.global_step})", flush=True)
    if is_rank0:
        _rewrite_metrics(run_dir, state.history)

    train = ds.split_csr("train")  # full matrix: evaluation input and mask on every rank
    store = train_rows_of_this_rank(train, ds.n_items)
    # Every rank runs the smallest shard's row count: equal steps, equal batch sizes.
    n_rows = sync.all_reduce_min_int(len(store), device)
    if n_rows == 0:
        raise RuntimeError(f"a worker received no train rows from {ds.path}: use fewer workers "
                           f"than users ({ds.n_users})")
    evals = split_eval_data(ds, train, cfg.eval.mask_valid_at_test)
    batch = cfg.train.batch_size
    core = model  # the unwrapped module: optimizers, checkpoints, scoring

    for epoch in range(state.epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        model.train()
        generator = reseed(cfg, epoch, device)
        loss_sum = torch.zeros(2, dtype=torch.float64)
        order = epoch_order(len(store), cfg.train.seed, epoch, sync.rank())
        data_s = sync_s = 0.0  # time to slice/convert batches, and in the non-DDP collectives
        tick = time.perf_counter()
        for users_np, rows in minibatches(store, order, batch, n_rows):
            users_B = torch.from_numpy(users_np).to(device)
            rows_BI = to_torch_csr(rows, device)
            data_s += time.perf_counter() - tick
            # Alg. 1 l.3-8: t ~ p_t, forward process q(x_t | f_s(x_in)), C-Net prediction.
            p_T = step_probabilities(table, counts, cfg.diffusion.uniform_floor,
                                     enabled=cfg.diffusion.importance_sampling)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(rows_BI, users_B, step_probs=p_T, generator=generator, cnet=cnet)
            # Alg. 1 l.10-11: weighted loss (Eq. 13) and a gradient step.
            if not torch.isfinite(out.loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {state.global_step}: "
                                         "lower train.lr or enable train.grad_clip")
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            out.loss.backward()
            tick = time.perf_counter()
            sync.synced_sparse_grad(core.z_in.weight, batch)
            sync_s += time.perf_counter() - tick
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(opts[0].param_groups[0]["params"], cfg.train.grad_clip)
            for opt in opts:
                opt.step()
            # Alg. 1 l.13: the history update, with every rank's values in rank order.
            tick = time.perf_counter()
            t_N, loss_N = sync.gather_step_losses(out.t, out.rec_loss, batch)
            table, counts = update_history(table, counts, t_N, loss_N)
            sync_s += time.perf_counter() - tick
            loss_sum += torch.tensor([out.loss.item() * len(users_B), len(users_B)], dtype=torch.float64)
            state.global_step += 1
            _maybe_inject_fault(cfg, state.global_step, run_dir)
            tick = time.perf_counter()
        state.epoch = epoch + 1
        loss_sum = sync.all_reduce_sum(loss_sum.to(device)).cpu()
        train_time = time.perf_counter() - t0

        if state.epoch % cfg.train.eval_every and state.epoch != cfg.train.epochs:
            continue
        # --- evaluate, select on valid, checkpoint
        model.eval()
        valid = evaluate(core.score, evals["valid"], cfg.eval.ks, cfg.eval.batch_size, device)
        current = valid[cfg.eval.select_metric]
        improved = current > state.best_metric
        if improved:
            state.best_metric, state.best_epoch, state.bad_evals = current, state.epoch, 0
        else:
            state.bad_evals += 1
        # Only the best valid epoch's test is reported: score test there (or always, if asked).
        test = (evaluate(core.score, evals["test"], cfg.eval.ks, cfg.eval.batch_size, device)
                if improved or cfg.eval.test_every_eval else {})
        row = {"epoch": state.epoch, "step": state.global_step,
               "loss": loss_sum[0].item() / max(loss_sum[1].item(), 1.0),
               "train_time_s": train_time, "users_per_s": loss_sum[1].item() / max(train_time, 1e-9),
               "data_time_s": data_s, "sync_time_s": sync_s,
               "eval_time_s": time.perf_counter() - t0 - train_time,
               **{f"valid/{k}": v for k, v in valid.items()}, **{f"test/{k}": v for k, v in test.items()},
               "best_epoch": state.best_epoch}
        state.history.append(row)
        stop = state.bad_evals >= cfg.train.patience
        _report(row, state, model, opts, table, counts, cfg, ds.manifest_sha256, run_dir, improved, is_rank0)
        if stop:
            if is_rank0:
                print(f"[ld4mrec] early stop at epoch {state.epoch}: no better valid "
                      f"{cfg.eval.select_metric} for {cfg.train.patience} evaluations", flush=True)
            break

    best = next((r for r in state.history if r["epoch"] == state.best_epoch), {})
    return {"best_epoch": state.best_epoch, "best": best, "epochs_run": state.epoch,
            "replica_fingerprints": sync.all_gather_objects(replica_fingerprint(model, table, counts))}


def _report(row: dict[str, Any], state: LoopState, model: LD4MRec, opts: Optimizers, table: torch.Tensor,
            counts: torch.Tensor, cfg: Config, manifest_sha256: str, run_dir: str, improved: bool,
            is_rank0: bool) -> None:
    """One Ray Train report per evaluation; rank 0 alone writes files and the checkpoint."""
    metrics = {k: v for k, v in row.items()}
    if is_rank0:
        print(_progress_line(row, cfg), flush=True)
        _rewrite_metrics(run_dir, state.history)  # whole-file writes: object stores cannot append
    if not _in_ray_train():
        if is_rank0 and improved:
            _write_best_model(model, cfg, manifest_sha256, run_dir, row)
        return
    import ray.train

    if not is_rank0:
        ray.train.report(metrics, checkpoint=None)
        return
    if improved:
        _write_best_model(model, cfg, manifest_sha256, run_dir, row)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, checkpoint_state(model, opts, table, counts, state, cfg, manifest_sha256))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _write_best_model(model: LD4MRec, cfg: Config, manifest_sha256: str, run_dir: str,
                      row: dict[str, Any]) -> None:
    """The best weights, with what scoring needs, beside the Ray checkpoints (atomic)."""
    state = {"model": model.state_dict(), "item_factors": item_factors_of(model),
             "config": config_to_dict(cfg), "manifest_sha256": manifest_sha256,
             "epoch": row["epoch"], "metrics": row}
    storage.write_bytes(storage.join(run_dir, BEST_MODEL_FILE), state_bytes(state))


def _rewrite_metrics(run_dir: str, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl = the loop's history: rows of epochs lost to a failure vanish."""
    storage.write_text(storage.join(run_dir, METRICS_FILE), "".join(json.dumps(r) + "\n" for r in history))


def _progress_line(row: dict[str, Any], cfg: Config) -> str:
    sel = cfg.eval.select_metric
    test = f"{row['test/' + sel]:.4f}" if "test/" + sel in row else "  –   "
    return (f"[ld4mrec] epoch {row['epoch']:4d}  loss {row['loss']:.5f}  "
            f"valid {sel} {row['valid/' + sel]:.4f}  test {sel} {test}  "
            f"best@{row['best_epoch']}  {row['users_per_s']:.0f} users/s  "
            f"train {row['train_time_s']:.1f}s eval {row['eval_time_s']:.1f}s")


def _maybe_inject_fault(cfg: Config, global_step: int, run_dir: str) -> None:
    """Fault injection for tests: the last rank dies once, hard, at the given step."""
    if cfg.train.fail_at_step != global_step or sync.rank() != sync.world_size() - 1:
        return
    marker = storage.join(run_dir, FAULT_MARKER)
    if storage.exists(marker):
        return
    storage.write_text(marker, f"killed at step {global_step}\n")
    print(f"[ld4mrec] fault injection: rank {sync.rank()} exits at step {global_step}", flush=True)
    os._exit(1)
