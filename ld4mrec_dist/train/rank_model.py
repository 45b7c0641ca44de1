"""What one rank holds of the model: built whole (data parallel) or only its item slice
(item parallel), with V_k read from the run directory or fitted by the ranks.

Shapes: U users, I items, R this rank's users (partition.py), L = hi − lo the items of its
slice, K SVD rank.

Data parallel: the model is built whole on every rank (`build.build_model`) from V_k [I, K].
Item parallel: each rank builds only its shard (`parallel.build.build_sharded_from_dataset`:
FC_in / FC_out allocated for its L items only, its rows of V_k, of the features and of the
degrees), so no rank ever holds the |I|-sized layers or buffers whole.

V_k (`model.svd_solver`): fbpca's was fitted by the driver and written to the run
directory; each rank reads it (an item-parallel rank keeps its rows). distributed: the
ranks fit it here from the train rows they read anyway, on their data × item grid
(`svd_dist.distributed_item_factors`), and rank 0 writes the gathered V_k to the run
directory, so that a restart or a `--resume` reads it back (the same V_k as the run
started with, whatever the new layout) instead of fitting again. Whether the file is
there is decided once, by rank 0, for every rank: the fit is a collective.
"""

from __future__ import annotations

import time

import numpy as np
import torch.distributed as tdist
from scipy import sparse as sp

from data_pipeline import storage
from data_pipeline.dataset import PreparedDataset
from ld4mrec_dist import dist
from ld4mrec_dist.build import build_model
from ld4mrec_dist.config import Config
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.parallel.build import build_sharded_from_dataset, mesh_item_range
from ld4mrec_dist.parallel.conditions import gathered_item_factors
from ld4mrec_dist.run_dir import ITEM_FACTORS_FILE, file_in, read_item_factors, write_item_factors
from ld4mrec_dist.svd_dist import Group, distributed_item_factors
from ld4mrec_dist.train.context import WorkerContext
from ld4mrec_dist.train.engine import DataParallel, Engine, ItemParallel, item_parallel_mesh


def build_rank(cfg: Config, ds: PreparedDataset, run_dir: str, worker: WorkerContext, strategy: str,
               train_rows: sp.csr_matrix) -> tuple[LD4MRec, Engine]:
    """This rank's model and engine. `train_rows`: the train rows [R, I] of the users this
    rank reads (`data_placement`), what the distributed SVD fits V_k from."""
    if strategy != "item_parallel":
        fitted = fit_here(cfg, run_dir)
        v_IK = (fitted_item_factors(cfg, train_rows, None, tdist.group.WORLD if dist.world_size() > 1 else None,
                                    None) if fitted else read_item_factors(run_dir))
        model = build_model(cfg, ds, v_IK, worker.device)
        if fitted and worker.rank == 0:
            write_item_factors(run_dir, v_IK)
        return model, DataParallel(model, cfg, worker, strategy)
    mesh = item_parallel_mesh(cfg, worker)
    lo, hi = mesh_item_range(mesh, ds.n_items)
    fitted = fit_here(cfg, run_dir)
    v_LK = (fitted_item_factors(cfg, train_rows, (lo, hi), mesh.get_group("data"), mesh.get_group("item"))
            if fitted else read_item_factors(run_dir)[lo:hi].copy())
    model, layout = build_sharded_from_dataset(cfg, ds, v_LK, mesh, worker.device)
    if fitted:
        gathered_IK = gathered_item_factors(model, layout)  # a collective over the item group: every rank
        if worker.rank == 0:
            write_item_factors(run_dir, gathered_IK.numpy())
    return model, ItemParallel(model, layout, cfg, worker.device)


def data_placement(cfg: Config, worker: WorkerContext, strategy: str) -> tuple[int, int]:
    """(data rank, data world): which block of users this rank reads. Item parallel: the
    W_item ranks of an item group read the same users (world rank r is data rank
    r // W_item, `parallel.item.item_mesh`)."""
    if strategy != "item_parallel":
        return worker.rank, worker.world
    group = cfg.scaling.item_group or worker.world
    return worker.rank // group, worker.world // group


def fit_here(cfg: Config, run_dir: str) -> bool:
    """Whether the ranks fit V_k now: `model.svd_solver=distributed` and no item_factors.npy
    in the run directory yet (rank 0 looks; every rank gets its answer)."""
    if cfg.model.svd_solver != "distributed":
        return False
    there = storage.exists(file_in(run_dir, ITEM_FACTORS_FILE)) if dist.rank() == 0 else False
    return not dist.all_gather_objects(there)[0]


def fitted_item_factors(cfg: Config, train_rows: sp.csr_matrix, item_range: tuple[int, int] | None,
                        data_group: Group, item_group: Group) -> np.ndarray:
    """V_k's rows [lo, hi) (all I without `item_range`), float32, fitted by the ranks."""
    t0 = time.perf_counter()
    v_LK = distributed_item_factors(train_rows, cfg.model.svd_rank, cfg.train.seed, item_range=item_range,
                                    data_group=data_group, item_group=item_group)
    if dist.rank() == 0:
        print(f"[ld4mrec] distributed randomized SVD (k={v_LK.shape[1]}) over {dist.world_size()} rank(s): "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
    return v_LK
