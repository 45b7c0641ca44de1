"""An item-sharded LD4MRec built sharded: no rank ever materialises the whole catalogue.

Shapes: I items, L = hi − lo the items of this rank's slice, D hidden width, K SVD rank,
D_m width of modality m's features.

`build_sharded_model` builds the model of one item slice: the data-derived buffers are the
slice's rows of V_k, of every feature array and of the item degrees (L·(K + ΣD_m + 1)
floats), C-Net's FC_in and FC_out are created on the meta device (no storage, no random
draw), sharded by `parallel.item.shard_items`, and only then is each rank's shard
allocated and initialised (`init_item_shards`). Adam's moments are created from the local
shards at the first step, so they are sliced too.

Initialisation law: the full layer's. FC_in's weight [D, I] and FC_out's [I, D] are
Xavier-normal of the whole layer, N(0, 2 / (I + D)), biases zero, as `cnet._linear` draws
them in one process. The random stream differs from the single-process model's: the
item layers are drawn per block of `INIT_BLOCK` items from a generator seeded by (seed,
layer, block), so a shard's values do not depend on how many ranks share the items (one
rank, or W_item ranks, hold the same numbers), and because FC_in draws nothing while the
replicated blocks (BD, BG, time) are built, those take the global RNG's first draws after
`torch.manual_seed(seed)` (equal on every rank; different numbers from the single-process
model, which draws FC_in's I·D values first). A model built whole and sharded
(`shard_items` on `build.build_model`'s) keeps the single-process numbers instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from data_pipeline.dataset import PreparedDataset
from ld4mrec_dist import dist
from ld4mrec_dist.build import read_only_tensor
from ld4mrec_dist.config import Config
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.parallel.conditions import standardized_over_items
from ld4mrec_dist.parallel.item import ItemLayout, item_slice, local_tensor, shard_items

INIT_BLOCK = 65536
"""Items per independently seeded block of the item layers' initial weights."""

FC_IN, FC_OUT = 1, 2  # stream keys of the two item layers


def mesh_item_range(mesh: DeviceMesh, n_items: int) -> tuple[int, int]:
    """[lo, hi): the items of this rank on the ("data", "item") mesh (`item_slice`)."""
    return item_slice(n_items, mesh.size(1), mesh.get_local_rank("item"))


def normal_rows(n_items: int, width: int, lo: int, hi: int, seed: int, key: int, std: float = 1.0) -> Tensor:
    """Rows [lo, hi) of an [I, width] matrix of N(0, std²) draws, float32 [L, width], drawn
    block by block (`INIT_BLOCK` items, each its own stream named (seed, key, block)): the
    same rows whatever slice they are drawn in."""
    out_LW = torch.empty(hi - lo, width)
    for block in range(lo // INIT_BLOCK, -(-hi // INIT_BLOCK)):
        start, stop = block * INIT_BLOCK, min((block + 1) * INIT_BLOCK, n_items)
        gen = torch.Generator().manual_seed(dist.stream_seed(seed, key, block))
        block_NW = torch.randn(stop - start, width, generator=gen).mul_(std)
        a, b = max(start, lo), min(stop, hi)
        out_LW[a - lo:b - lo] = block_NW[a - start:b - start]
    return out_LW


def xavier_rows(n_items: int, hidden: int, lo: int, hi: int, seed: int, layer: int) -> Tensor:
    """Rows [lo, hi) of an item layer's weight as [I, D], Xavier-normal of the whole layer
    (std √(2 / (I + D))), float32 [L, D] (`normal_rows`' block streams)."""
    return normal_rows(n_items, hidden, lo, hi, seed, layer, math.sqrt(2.0 / (n_items + hidden)))


def _materialize(layer: nn.Module, name: str, local: Tensor) -> None:
    meta = getattr(layer, name)
    assert isinstance(meta, DTensor) and local.shape == meta.to_local().shape, (name, local.shape)
    setattr(layer, name, nn.Parameter(DTensor.from_local(local, meta.device_mesh, meta.placements, run_check=False,
                                                         shape=meta.shape, stride=meta.stride())))


def init_item_shards(model: LD4MRec, layout: ItemLayout, seed: int, device: torch.device) -> None:
    """Allocate this rank's shards of FC_in / FC_out (meta after `shard_items`) on `device`
    and draw them with the full layers' law (module docstring)."""
    cnet, (lo, hi), d = model.cnet, (layout.lo, layout.hi), model.hidden
    if not local_tensor(cnet.fc_in.weight).is_meta:
        raise ValueError("the item layers are already materialised: build the model with item_range")
    _materialize(cnet.fc_in, "weight", xavier_rows(model.n_items, d, lo, hi, seed, FC_IN).T.contiguous().to(device))
    _materialize(cnet.fc_in, "bias", torch.zeros(d, device=device))  # replicated
    _materialize(cnet.fc_out, "weight", xavier_rows(model.n_items, d, lo, hi, seed, FC_OUT).to(device))
    _materialize(cnet.fc_out, "bias", torch.zeros(hi - lo, device=device))


def build_sharded_model(cfg: Config, n_users: int, n_items: int, mesh: DeviceMesh, item_factors_LK: Tensor | None,
                        item_features: Mapping[str, Tensor], item_degree_L: Tensor | None,
                        device: torch.device) -> tuple[LD4MRec, ItemLayout]:
    """This rank's item-sharded LD4MRec on `device` and its layout, from the slice's rows
    [lo, hi) (`mesh_item_range`) of V_k, of each feature and of the item degrees."""
    lo, hi = mesh_item_range(mesh, n_items)
    torch.manual_seed(cfg.train.seed)  # the replicated blocks: the same draws on every rank
    model = LD4MRec(cfg.model, cfg.diffusion, n_users, n_items, item_factors=item_factors_LK,
                    item_features=item_features, item_degree=item_degree_L, item_range=(lo, hi))
    if cfg.model.feature_norm == "standardize":  # μ, σ over all I items, not the slice's
        for j in range(len(model.modalities)):
            for key, stat in standardized_over_items(model.item_feature(j), n_items, mesh.get_group("item")).items():
                setattr(model, f"item_feature_{j}_{key}", stat)
    layout = shard_items(model, mesh)
    init_item_shards(model, layout, cfg.train.seed, device)
    return model.to(device), layout


def build_sharded_from_dataset(cfg: Config, ds: PreparedDataset, item_factors_LK: np.ndarray, mesh: DeviceMesh,
                               device: torch.device) -> tuple[LD4MRec, ItemLayout]:
    """`build_sharded_model` from a prepared dataset: the slice's rows of the memory-mapped
    features (only those pages are read) and of the item degrees; `item_factors_LK`: this
    rank's rows of V_k (`svd_dist.distributed_item_factors` returns them)."""
    lo, hi = mesh_item_range(mesh, ds.n_items)
    features = {m: read_only_tensor(ds.feature(m)[lo:hi]).clone() for m in ds.modalities}
    degree_L = torch.from_numpy(ds.item_degree[lo:hi].astype(np.float32))
    return build_sharded_model(cfg, ds.n_users, ds.n_items, mesh, torch.from_numpy(item_factors_LK), features,
                               degree_L, device)
