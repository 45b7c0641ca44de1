"""What every rank builds before its first step: the model, its DDP wrapper, the optimizers.

Shapes: I items, K SVD rank, D_m width of modality m's features, U users.
The same code serves the trainer, scoring (`recommend.py`) and the benchmarks, so a
benchmark times exactly what training runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from data_pipeline.dataset import PreparedDataset
from ld4mrec_dist import dist
from ld4mrec_dist.config import Config
from ld4mrec_dist.model import LD4MRec


class Optimizers(NamedTuple):
    dense: torch.optim.Optimizer
    """Adam over C-Net's parameters (DDP all-reduces their gradients)."""
    z_in: torch.optim.Optimizer
    """SparseAdam over z_in, whose gradient has the batch's rows only."""


def build_model(cfg: Config, ds: PreparedDataset, item_factors_IK: np.ndarray,
                device: torch.device) -> LD4MRec:
    """LD4MRec on `device`, its random init identical on every rank (same seed)."""
    torch.manual_seed(cfg.train.seed)
    features = {m: read_only_tensor(ds.feature(m)) for m in ds.modalities}
    model = LD4MRec(cfg.model, cfg.diffusion, ds.n_users, ds.n_items,
                    item_factors=torch.from_numpy(item_factors_IK),
                    item_features=features,
                    item_degree=torch.from_numpy(ds.item_degree.astype(np.float32)))
    return model.to(device)


def read_only_tensor(array_ID: np.ndarray) -> torch.Tensor:
    """A CPU tensor over a memory-mapped float32 array, without a copy: the workers of a
    node share the file's pages (1 GB of features at Electronics scale). Never written."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array_ID, dtype=np.float32))


def wrap_cnet(model: LD4MRec, device: torch.device, strategy: str = "ddp") -> torch.nn.Module:
    """C-Net, in DDP when distributed: what `model(…, cnet=…)` runs.

    Only C-Net's parameters are all-reduced. z_in (|U| × D) stays out: its rows are
    synchronised sparsely by `dist.synced_sparse_grad`. The model's buffers (schedule, SVD
    factors, item features) are identical on every rank by construction and are not
    C-Net's, so DDP never broadcasts them (the features are a GB at Electronics scale).
    `strategy`: how the gradients cross ranks, a resolved `scaling.strategy` (`ddp`,
    `ddp_bf16`, `powersgd`: `strategy.register_comm_hook`; `auto` is resolved before, by
    `scaling_model.resolve_strategy`). Checked even in one process, so a strategy the trainer
    cannot run fails on a laptop as it would on a cluster.
    """
    from ld4mrec_dist import strategy as strategies

    strategies.check_available(strategy)
    if not dist.is_distributed():
        return model.cnet
    # A bare torch.device("cuda") has no index; DDP needs the one the module sits on.
    device_ids = [torch.cuda.current_device() if device.index is None else device.index] \
        if device.type == "cuda" else None
    ddp = DistributedDataParallel(model.cnet, device_ids=device_ids)
    strategies.register_comm_hook(ddp, strategy)
    return ddp


def dense_parameters(model: LD4MRec) -> list[torch.nn.Parameter]:
    """Every parameter but z_in (= C-Net's): what DDP all-reduces and Adam updates."""
    return [p for n, p in model.named_parameters() if n != "z_in.weight"]


def build_optimizers(model: LD4MRec, cfg: Config,
                     param_groups: Sequence[Sequence[torch.nn.Parameter]] | None = None) -> Optimizers:
    """Adam over C-Net (PyTorch's fused kernel unless `train.fused_adam=false`: one pass per
    parameter instead of ~10 on CPU), SparseAdam over z_in (no fused form exists; it
    touches the batch's B rows only). `param_groups`: Adam's groups, as the engine's step
    parts give them (item-parallel: the sharded and the plain parameters apart, since a
    fused or foreach kernel takes one kind per call); None: one group, `dense_parameters`."""
    groups = [dense_parameters(model)] if param_groups is None else param_groups
    adam = torch.optim.Adam([{"params": list(g)} for g in groups], lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay, fused=cfg.train.fused_adam or None)
    return Optimizers(dense=adam, z_in=torch.optim.SparseAdam([model.z_in.weight], lr=cfg.train.lr))


def item_factors_of(model: LD4MRec) -> torch.Tensor:
    """V_k as scoring needs it again (the no_bd ablation has none: an empty tensor)."""
    if model.item_range is not None:
        raise ValueError("an item-sharded model holds a slice of V_k: parallel.conditions.gathered_item_factors")
    factors = getattr(model, "item_factors", None)
    return torch.zeros(0, 0) if factors is None else factors.detach().cpu()
