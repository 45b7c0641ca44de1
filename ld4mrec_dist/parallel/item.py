"""Item-parallel LD4MRec: C-Net's two |I|-sized layers sharded over the items (docs/design.md §6.1).

Shapes (legend in ld4mrec_dist/__init__.py): B users in the batch, I items, L = hi − lo the
items of this rank's slice, D hidden width, K SVD rank, T diffusion steps.

The ranks form a 2-D mesh ("data", "item"). The W_item ranks of an item group see the same
users; rank i owns items [lo, hi) = the i-th `torch.chunk` of range(I), the split DTensor's
`Shard` uses. `shard_items` parallelises the model's own CNet in place with torch's
tensor-parallel API: FC_in (input = items) is `RowwiseParallel`, its weight [D, I] split by
columns and its output all-reduced (B·D); FC_out (output = items) is `ColwiseParallel`, its
weight [I, D] and bias split by rows, so C-Net returns this slice of x̂ [B, L], and in
backward the gradient of FC_out's input is all-reduced (B·D). Everything between (BD and BG
blocks, z_in) is replicated and gets the same gradients on every rank of the group (z_in's
only to float rounding: `step.run_step` averages it over the whole world, see
`ItemParallelStep.sync_grads`). `CNet.forward` itself runs unchanged.

What DTensor does not express is done here with plain collectives over the item group:
- the forward process is elementwise: each rank draws ε and the soft-reconstruction mask for
  its own slice (`draw_slice`); t must be equal across the group (its generator is seeded
  from the data rank only, `slice_generators`);
- the conditions (c_u, e_{u,m}) are sums over a row's items: each rank holds only its
  slice of V_k, of the item features and of the item degrees, computes its slice's partial
  sums and one all-reduce of B·(K + ΣD_m) floats adds them up (`parallel.conditions`,
  installed as the model's `conditions` by `shard_items`);
- L_rec = c0² · mean over all I items: each rank's `rec_loss` over its slice, times L / I,
  is its share; the shares sum to L_rec. Each rank back-propagates its own share (their
  sum is the loss, and FC_out's backward all-reduce adds the shares' gradients up), and one
  all-reduce of [B + 1] floats gives every rank the batch's L_rec values and the loss.

With `model.input_norm=l2` one more all-reduce, of B floats, gives every rank the norms of
the x_t rows over all I items (`shard_items`).

Per step and rank the item group moves 2·B·D·4 + B·(K + ΣD_m)·4 + (B + 1)·4 bytes (+ B·4 with
l2), whatever I; the C-Net parameters a rank holds are 2·L·D + L plus the item-independent
layers (O(D² + D·ΣD_m)), its data-derived buffers L·(K + ΣD_m + 1) floats. Built with
`parallel.build.build_sharded_model`, no rank ever holds more; `shard_items` on a model
built whole frees the rest of its item layers' and buffers' rows.
With W_data > 1 the dense gradients are then averaged over the data group (the sharded
layers' local shards: 2·L·D + L floats, and the replicated rest).

Random numbers: besides the two generators above, only C-Net's input dropout draws, from
torch's global RNG, over this rank's slice of x_t: seed that RNG per world rank (as the
data-parallel trainer does), so that different slices drop independent entries; nothing in
the replicated blocks draws.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from ld4mrec_dist import dist
from ld4mrec_dist.build import Optimizers, dense_parameters
from ld4mrec_dist.cnet import timestep_embedding
from ld4mrec_dist.config import Config
from ld4mrec_dist.encoders import as_csr
from ld4mrec_dist.model import LD4MRec, no_autocast
from ld4mrec_dist.parallel.conditions import conditions_over_slices, keep_item_slice
from ld4mrec_dist.sampler import SamplerHistory, importance_weights, sample_steps
from ld4mrec_dist.step import StepLoss, run_step
from ld4mrec_dist.timing import StepTimer

MESH_DIMS = ("data", "item")
L2_EPS = 1e-12
"""`model.input_norm=l2`'s floor of a row norm (`F.normalize`'s eps, as `cnet.scaled_input` uses)."""


def item_mesh(data: int, item: int, device_type: str = "cpu") -> DeviceMesh:
    """The 2-D ("data", "item") mesh over the default process group (W = data · item);
    world rank r is data rank r // item and item rank r % item."""
    return init_device_mesh(device_type, (data, item), mesh_dim_names=MESH_DIMS)


def item_slice(n_items: int, parts: int, part: int) -> tuple[int, int]:
    """[lo, hi) of slice `part` of `parts`: `torch.chunk`'s split, as DTensor's `Shard` has it."""
    size = -(-n_items // parts)
    lo = min(part * size, n_items)
    return lo, min(lo + size, n_items)


@dataclass(frozen=True)
class ItemLayout:
    """Where this rank sits: its data and item coordinates and its item slice [lo, hi)."""

    mesh: DeviceMesh
    n_items: int

    @property
    def item_world(self) -> int:
        return self.mesh.size(1)

    @property
    def data_world(self) -> int:
        return self.mesh.size(0)

    @property
    def item_rank(self) -> int:
        return self.mesh.get_local_rank("item")

    @property
    def data_rank(self) -> int:
        return self.mesh.get_local_rank("data")

    @property
    def item_group(self) -> tdist.ProcessGroup:
        return self.mesh.get_group("item")

    @property
    def data_group(self) -> tdist.ProcessGroup:
        return self.mesh.get_group("data")

    @property
    def lo(self) -> int:
        return item_slice(self.n_items, self.item_world, self.item_rank)[0]

    @property
    def hi(self) -> int:
        return item_slice(self.n_items, self.item_world, self.item_rank)[1]


def shard_items(model: LD4MRec, mesh: DeviceMesh) -> ItemLayout:
    """Parallelise `model.cnet` in place over the mesh's "item" dimension (FC_in rowwise,
    FC_out colwise); returns the rank's layout. Every rank must hold the same initial model
    (build it from the same seed); the other parameters stay plain, replicated tensors.
    A model built whole keeps only its slice of the item buffers (`conditions.keep_item_slice`);
    one built for this slice (`item_range`, FC_in / FC_out on the meta device: see
    `parallel.build`) gets meta shards, to be initialised by the caller. Either way the
    model's `conditions` become the slice's partial sums plus the item group's all-reduce.

    `model.input_norm=l2`: the norm of an x_t row spans every slice, so CNet's own
    normalisation (each slice over its own norm) is switched off and a pre-hook divides the
    slice by the row's norm over all I items instead: one all-reduce of the B squared
    partial norms over the item group, before C-Net's input dropout as in `CNet.forward`.
    The norm is taken as a constant (x_t needs no gradient: it is drawn, not learnt).

    Refused: a mesh with an empty item slice (I < W_item chunks).
    """
    if tuple(mesh.mesh_dim_names or ()) != MESH_DIMS:
        raise ValueError(f"item-parallel needs a mesh with dimensions {MESH_DIMS}, got {mesh.mesh_dim_names}")
    layout = ItemLayout(mesh, model.n_items)
    slices = [item_slice(model.n_items, layout.item_world, p) for p in range(layout.item_world)]
    empty = [p for p, (lo, hi) in enumerate(slices) if hi == lo]
    if empty:
        raise ValueError(f"{model.n_items} items split {layout.item_world} ways leave slices {empty} empty")
    lo, hi = slices[layout.item_rank]
    if model.item_range is None:
        keep_item_slice(model, lo, hi)
    elif model.item_range != (lo, hi):
        raise ValueError(f"the model holds items {model.item_range}, this rank's slice is [{lo}, {hi})")
    model.sharded_conditions = functools.partial(conditions_over_slices, model, layout)
    cnet = model.cnet
    parallelize_module(cnet, mesh["item"], {"fc_in": RowwiseParallel(), "fc_out": ColwiseParallel()})
    n_items, group_mesh, width = model.n_items, mesh["item"], layout.hi - layout.lo

    def checked(x_BL: Tensor) -> Tensor:
        if x_BL.shape[-1] != width:
            raise ValueError(f"item-parallel C-Net takes its slice of x ({width} items), got {x_BL.shape[-1]}: "
                             "use slice_loss / score_slice, not LD4MRec.forward / score")
        return x_BL

    def as_item_sharded(_: nn.Module, args: tuple[Tensor, ...]) -> tuple[DTensor]:
        # RowwiseParallel infers the global width as L · W_item; give DTensor the true I
        # (slices differ by one when W_item does not divide I).
        (x_BL,) = args
        return (DTensor.from_local(checked(x_BL), group_mesh, [Shard(1)], run_check=False,
                                   shape=torch.Size((x_BL.shape[0], n_items)), stride=(n_items, 1)),)

    def l2_over_items(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x_BL = checked(args[0])
        sq_B = x_BL.detach().float().square().sum(1)
        tdist.all_reduce(sq_B, group=layout.item_group)
        norm_B1 = sq_B.sqrt().clamp_min(L2_EPS).unsqueeze(1)  # F.normalize's, as cnet.scaled_input
        return ((x_BL / norm_B1).to(x_BL.dtype), *args[1:])

    if cnet.input_norm == "l2":
        cnet.input_norm = "none"  # CNet would divide each slice by its own norm
        cnet.register_forward_pre_hook(l2_over_items)
    cnet.fc_in.register_forward_pre_hook(as_item_sharded, prepend=True)
    local = local_tensor(cnet.fc_out.weight)
    if local.shape[0] != layout.hi - layout.lo:
        raise AssertionError(f"FC_out's shard has {local.shape[0]} rows, slice [{layout.lo}, {layout.hi})")
    return layout


def item_param_groups(model: LD4MRec) -> list[list[nn.Parameter]]:
    """Adam's parameter groups of a sharded model: the DTensor shards, then the plain
    replicated parameters (a fused or foreach kernel takes one kind per call)."""
    params = dense_parameters(model)
    return [[p for p in params if isinstance(p, DTensor)], [p for p in params if not isinstance(p, DTensor)]]


def local_tensor(x: Tensor) -> Tensor:
    """A DTensor's shard on this rank (the tensor itself when it is a plain one)."""
    return x.to_local() if isinstance(x, DTensor) else x


def is_sharded(x: Tensor) -> bool:
    """A DTensor split over the item group (not one `Replicate`d on it, as FC_in's bias is)."""
    return isinstance(x, DTensor) and any(p.is_shard() for p in x.placements)


def column_slice(rows_BI: Tensor, lo: int, hi: int) -> Tensor:
    """Columns [lo, hi) of a batch's sparse rows, dense float32 [B, L] (never [B, I])."""
    csr = as_csr(rows_BI)
    crow_B1, col_Z, val_Z = csr.crow_indices(), csr.col_indices(), csr.values()
    row_Z = torch.repeat_interleave(torch.arange(csr.shape[0], device=val_Z.device), crow_B1.diff(),
                                    output_size=val_Z.numel())
    keep_Z = (col_Z >= lo) & (col_Z < hi)
    out_BL = torch.zeros(csr.shape[0], hi - lo, dtype=torch.float32, device=val_Z.device)
    out_BL[row_Z[keep_Z], col_Z[keep_Z] - lo] = val_Z[keep_Z]
    return out_BL


def slice_generators(seed: int, epoch: int, layout: ItemLayout,
                     device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(t generator, slice generator) of an epoch. The first is seeded from (seed, epoch,
    data rank), so every rank of an item group draws the same t (and with W_item = 1 the
    same stream as the trainer's data-parallel `engine.epoch_seed`); the second also from the item rank: ε and the
    soft-reconstruction mask of different slices are independent."""
    def gen(*key: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(dist.stream_seed(*key))

    return gen(seed, epoch, layout.data_rank), gen(seed, epoch, layout.data_rank, 1 + layout.item_rank)


class SliceDraw(NamedTuple):
    """The forward process of one slice (Alg. 1 l.3-6): t [B] (equal on the item group), the
    target f_s(x_in) and the noise ε, each [B, L]."""

    t: Tensor
    target: Tensor
    noise: Tensor


def draw_slice(model: LD4MRec, x_BL: Tensor, p_T: Tensor, step_generator: torch.Generator,
               slice_generator: torch.Generator) -> SliceDraw:
    """t ~ p_T from the group's shared stream, then the mask and ε of this slice, drawn as
    `LD4MRec.forward` draws them (same functions, same order) but over L items."""
    t_B = sample_steps(p_T.to(step_generator.device), x_BL.shape[0], step_generator).to(model.device)
    target_BL = model.reconstruction_target(x_BL, slice_generator)
    noise_BL = torch.randn(x_BL.shape, generator=slice_generator, device=model.device)
    return SliceDraw(t_B, target_BL, noise_BL)


class SliceLoss(NamedTuple):
    share: Tensor
    """Scalar: this slice's share of the batch loss (differentiable; the shares sum to the loss)."""
    t: Tensor
    """int64 [B]."""
    rec_share: Tensor
    """float32 [B], this slice's share of L_rec (detached)."""


def slice_loss(model: LD4MRec, layout: ItemLayout, rows_BI: Tensor, x_BL: Tensor, users_B: Tensor,
               draw: SliceDraw, p_T: Tensor) -> SliceLoss:
    """Alg. 1 l.6-10 on one slice, with `LD4MRec`'s own pieces: x_t of the slice, the
    conditions from the slices' partial sums (`parallel.conditions`), C-Net (sharded by `shard_items`) → x̂ [B, L], and
    the slice's share of the importance-weighted loss. Runs FC_in's and FC_out's collectives."""
    device = model.device
    with no_autocast(device):
        xt_BL = model.schedule.q_sample(draw.target, draw.t, draw.noise)
        c_BK, prefs = model.conditions(as_csr(rows_BI).to(device))
        tf_BD = timestep_embedding(draw.t, model.hidden) + model.z_in_rows(users_B)
    xhat_BL = model.cnet(xt_BL, tf_BD, c_BK, prefs)
    with no_autocast(device):
        # rec_loss averages over the L items it sees; × L / I makes it this slice's share.
        rec_B = model.schedule.rec_loss(draw.target, xhat_BL.float(), draw.t) * (x_BL.shape[1] / layout.n_items)
        share = (importance_weights(p_T, draw.t) * rec_B).mean()
    return SliceLoss(share, draw.t, rec_B.detach())


def reduce_losses(out: SliceLoss, layout: ItemLayout) -> tuple[Tensor, Tensor]:
    """(the batch's loss, L_rec [B]) summed over the item group: one all-reduce of B + 1 floats."""
    packed = torch.cat([out.rec_share.float(), out.share.detach().float().reshape(1)])
    tdist.all_reduce(packed, group=layout.item_group)
    return packed[-1], packed[:-1]


def clip_grad_norm(params: Sequence[Tensor], max_norm: float, layout: ItemLayout) -> Tensor:
    """`clip_grad_norm_` over the full (unsharded) parameters: the squares of the shards are
    summed over the item group, the replicated parameters are counted once (FC_in's bias
    too: a DTensor, but `Replicate`d, whole on every rank of the group)."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [local_tensor(g) for g in grads if is_sharded(g)]
    plain = [local_tensor(g) for g in grads if not is_sharded(g)]
    device = grads[0].device if grads else torch.device("cpu")
    sq = torch.zeros((), dtype=torch.float32, device=device)  # on the device: NCCL reduces no CPU tensor
    for g in sharded:
        sq = sq + g.float().square().sum()
    tdist.all_reduce(sq, group=layout.item_group)
    for g in plain:
        sq = sq + g.float().square().sum()
    norm = sq.sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in sharded + plain:
        g.mul_(scale.to(g.dtype))
    return norm


def average_over_data(params: Iterable[Tensor], layout: ItemLayout) -> None:
    """Average the dense gradients (local shards for the sharded layers) over the data group;
    a no-op when W_data = 1. (z_in's sparse rows go through `dist.synced_sparse_grad`.)"""
    if layout.data_world == 1:
        return
    for p in params:
        if p.grad is not None:
            g = local_tensor(p.grad)
            tdist.all_reduce(g, group=layout.data_group)
            g.div_(layout.data_world)


@dataclass
class ItemParallelStep:
    """The item-parallel parts of `step.run_step` on a rank of a ("data", "item") mesh.
    `generators`: `slice_generators` of the epoch; `draw`, when given, is the forward process to use
    instead of drawing one (tests, replays). With `autocast`, FC_in's all-reduce sums bf16
    partial products."""

    model: LD4MRec
    layout: ItemLayout
    generators: tuple[torch.Generator, torch.Generator] | None = None
    draw: SliceDraw | None = None

    @property
    def history_group(self) -> tdist.ProcessGroup:
        # The item ranks of a group hold the same t and L_rec: the history sees each user
        # once, in data-rank order, as with DDP.
        return self.layout.data_group

    def param_groups(self) -> list[list[nn.Parameter]]:
        return item_param_groups(self.model)

    def forward_loss(self, users_B: Tensor, rows_BI: Tensor, p_T: Tensor, autocast: bool) -> StepLoss:
        """This slice's loss share (back-propagated here; FC_out's backward all-reduce adds
        the shares' gradients up) and the batch's loss and L_rec summed over the item group."""
        x_BL = column_slice(rows_BI, self.layout.lo, self.layout.hi).to(self.model.device)
        draw = self.draw
        if draw is None:
            assert self.generators is not None, "an epoch's generators first (slice_generators)"
            draw = draw_slice(self.model, x_BL, p_T, *self.generators)
        with torch.autocast(device_type=self.model.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = slice_loss(self.model, self.layout, rows_BI, x_BL, users_B, draw, p_T)
        loss, rec_B = reduce_losses(out, self.layout)
        return StepLoss(out.share, loss, out.t, rec_B)

    def sync_grads(self, params: Sequence[Tensor]) -> None:
        """Over the data group (DataParallel's DDP does it inside backward). z_in's rows are
        synced over the whole world by the step: the W_item ranks of a group agree on them to
        float rounding only (a 2-rank Ray run ended with z_in digests that differed when each
        rank kept its own), so their mean keeps every replica bitwise equal."""
        average_over_data(params, self.layout)

    def clip_grads(self, params: Sequence[Tensor], max_norm: float) -> None:
        clip_grad_norm(params, max_norm, self.layout)


def item_parallel_step(model: LD4MRec, layout: ItemLayout, opts: Optimizers, history: SamplerHistory,
                       users_B: Tensor, rows_BI: Tensor,
                       generators: tuple[torch.Generator, torch.Generator] | None, cfg: Config,
                       autocast: bool = False, timer: StepTimer | None = None,
                       draw: SliceDraw | None = None) -> Tensor:
    """`step.run_step` with the item-parallel parts, as `step.train_step` is with the
    data-parallel ones (for tests and benchmarks that step a model directly)."""
    return run_step(ItemParallelStep(model, layout, generators, draw), model, opts, history, users_B, rows_BI, cfg,
                    autocast=autocast, timer=timer)


@torch.no_grad()
def score_slice(model: LD4MRec, rows_BI: Tensor, x_BL: Tensor, users_B: Tensor) -> Tensor:
    """Alg. 2 on one slice: x̂_θ(x_in, t_f = z_in, m) for items [lo, hi), float32 [B, L], as
    `LD4MRec.score` computes it (conditions summed over the slices). Runs the conditions' and
    FC_in's all-reduces."""
    with no_autocast(model.device):
        c_BK, prefs = model.conditions(as_csr(rows_BI).to(model.device))
        tf_BD = model.z_in_rows(users_B)
    return model.cnet(x_BL, tf_BD, c_BK, prefs, dropout=False).float()
