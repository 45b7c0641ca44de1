"""How the ranks share one training run: data parallel, or items sharded over a group.

Shapes: B users per rank per step, I items, W ranks, W_item ranks of an item group.

`DataParallel` (scaling.strategy ddp, ddp_bf16, powersgd): every rank holds all of C-Net,
the users are split over the W ranks, DDP averages C-Net's gradients (through the
strategy's communication hook). `ItemParallel` (scaling.strategy item_parallel): the ranks
form a ("data", "item") mesh; the W_item ranks of an item group hold the same users and
one slice of the items each (ld4mrec_dist/parallel/, docs/design.md §6.1). Both run the
one step skeleton `step.run_step`, each with its own parts (`step.DataParallelStep`,
`parallel.item.ItemParallelStep`). The loop sees (`Engine`) only what both offer: which
users this rank reads, a step, a ranking for evaluation, the full state for checkpoints
(PowerSGD's per-rank state included), and a fingerprint of the replicated state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Protocol

import torch
import torch.distributed as tdist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh

from ld4mrec_dist import dist
from ld4mrec_dist import strategy as strategies
from ld4mrec_dist.build import Optimizers, build_optimizers, dense_parameters, wrap_cnet
from ld4mrec_dist.config import Config
from ld4mrec_dist.eval.evaluator import RankFn, ranking_by_scores
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.parallel.checkpoint import load_plain_state, plain_state
from ld4mrec_dist.parallel.conditions import gathered_item_factors
from ld4mrec_dist.parallel.item import ItemLayout, ItemParallelStep, item_mesh, local_tensor, slice_generators
from ld4mrec_dist.parallel.topk import item_parallel_ranking
from ld4mrec_dist.sampler import SamplerHistory
from ld4mrec_dist.step import DataParallelStep, run_step
from ld4mrec_dist.timing import StepTimer
from ld4mrec_dist.train.context import WorkerContext


def digest(tensors: Iterable[Tensor]) -> str:
    """sha256 of tensors' bytes, in order."""
    h = hashlib.sha256()
    for x in tensors:
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def epoch_seed(cfg: Config, epoch: int, rank: int) -> int:
    """The seed of an epoch's random streams on a rank: a resume at an epoch boundary
    replays exactly the stream the interrupted run would have drawn."""
    return dist.stream_seed(cfg.train.seed, epoch, rank)


class Engine(Protocol):
    """What the loop sees of how the ranks share a run (`DataParallel`, `ItemParallel`)."""

    opts: Optimizers
    data_rank: int  # this rank's place among the ranks that hold different users
    data_world: int
    counts_users: bool  # whether this rank's users count in the epoch's loss and users/s

    def start_epoch(self, epoch: int) -> None: ...

    def step(self, sampler: SamplerHistory, users_B: Tensor, rows_BI: Tensor, autocast: bool,
             timer: StepTimer) -> Tensor: ...

    def rank_fn(self) -> RankFn: ...

    def full_state(self) -> dict[str, Any]: ...

    def load_state(self, saved: dict[str, Any]) -> None: ...

    def cnet_digest(self) -> str: ...


class DataParallel:
    """C-Net replicated (in DDP when W > 1), the users split over all W ranks."""

    counts_users = True  # every rank's users are its own

    def __init__(self, model: LD4MRec, cfg: Config, worker: WorkerContext, strategy: str):
        self.model, self.cfg, self.device = model, cfg, worker.device
        self.cnet = wrap_cnet(model, worker.device, strategy)
        self.hook_state = strategies.hook_state(self.cnet)  # PowerSGD's (None: a stateless strategy)
        self.generator = torch.Generator(device=worker.device)
        self.parts = DataParallelStep(model, self.cnet, self.generator)
        self.opts = build_optimizers(model, cfg, self.parts.param_groups())
        self.data_rank, self.data_world = worker.rank, worker.world

    def start_epoch(self, epoch: int) -> None:
        seed = epoch_seed(self.cfg, epoch, dist.rank())
        torch.manual_seed(seed)  # dropout
        self.generator.manual_seed(seed)  # t, soft-reconstruction mask, ε

    def step(self, sampler: SamplerHistory, users_B: Tensor, rows_BI: Tensor, autocast: bool,
             timer: StepTimer) -> Tensor:
        return run_step(self.parts, self.model, self.opts, sampler, users_B, rows_BI, self.cfg,
                        autocast=autocast, timer=timer)

    def rank_fn(self) -> RankFn:
        return ranking_by_scores(self.model.score)

    def full_state(self) -> dict[str, Any]:
        """The weights and optimizer states, as a checkpoint stores them (rank 0 writes them).
        With PowerSGD also "powersgd": every rank's hook state, gathered on rank 0 in rank
        order (a collective: every rank calls it; None off rank 0)."""
        full: dict[str, Any] = {"model": self.model.state_dict(), "optimizer": self.opts.dense.state_dict(),
                                "zin_optimizer": self.opts.z_in.state_dict()}
        if self.hook_state is not None:
            full["powersgd"] = dist.gather_objects_on_rank0(strategies.powersgd_state_dict(self.hook_state))
        return full

    def load_state(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.opts.dense.load_state_dict(saved["optimizer"])
        self.opts.z_in.load_state_dict(saved["zin_optimizer"])
        if self.hook_state is not None:
            self._restore_powersgd(saved.get("powersgd"))

    def _restore_powersgd(self, saved: list[dict[str, Any]] | None) -> None:
        """This rank's PowerSGD state from the checkpoint's list, or a fresh start said in one line."""
        why = strategies.powersgd_restore_problem(self.hook_state, saved, dist.world_size())
        if why is not None:
            if dist.rank() == 0:
                print(f"[ld4mrec] PowerSGD starts afresh ({self.hook_state.start_powerSGD_iter} plain all-reduce "
                      f"steps, new error feedback): {why}", flush=True)
            return
        assert saved is not None
        self._settle_buckets()
        strategies.load_powersgd_state(self.hook_state, saved[dist.rank()], self.device)

    def _settle_buckets(self) -> None:
        """One forward and backward of a zero loss through the DDP C-Net (a collective), while
        the fresh PowerSGD state still all-reduces plainly. DDP puts every parameter in one
        bucket for its first backward and rebuilds the buckets, in gradient-ready order, at
        the next forward; PowerSGD keys its error buffers and P, Q by bucket index, so a
        saved state fits the rebuilt buckets only. Leaves no gradient and no RNG draw
        outside its own generator (start_epoch reseeds the rest anyway)."""
        rows_BI = torch.zeros(1, self.model.n_items, device=self.device)
        rows_BI[0, 0] = 1.0
        generator = torch.Generator(device=self.device).manual_seed(0)
        out = self.model(rows_BI.to_sparse_csr(), torch.zeros(1, dtype=torch.int64), generator=generator,
                         cnet=self.cnet)
        (out.loss * 0.0).backward()
        self.opts.dense.zero_grad(set_to_none=True)
        self.opts.z_in.zero_grad(set_to_none=True)

    def cnet_digest(self) -> str:
        return digest(dense_parameters(self.model))


class ItemParallel:
    """C-Net's |I|-sized layers sharded over item groups of `scaling.item_group` ranks
    (0: all W); the users split over the W / W_item item groups."""

    def __init__(self, model: LD4MRec, layout: ItemLayout, cfg: Config, device: torch.device):
        """`model`: this rank's item-sharded model (`parallel.build.build_sharded_model`),
        `layout` where it sits on the mesh."""
        self.model, self.cfg, self.device, self.layout = model, cfg, device, layout
        self.parts = ItemParallelStep(model, self.layout)  # its generators: per epoch
        self.opts = build_optimizers(model, cfg, self.parts.param_groups())
        self.data_rank, self.data_world = self.layout.data_rank, self.layout.data_world
        # The ranks of an item group hold the same users: only item rank 0 counts them.
        self.counts_users = self.layout.item_rank == 0

    def start_epoch(self, epoch: int) -> None:
        # Dropout (on x_t's columns: each rank drops entries of its own slice) per world rank.
        torch.manual_seed(epoch_seed(self.cfg, epoch, dist.rank()))
        self.parts.generators = slice_generators(self.cfg.train.seed, epoch, self.layout, self.device)

    def step(self, sampler: SamplerHistory, users_B: Tensor, rows_BI: Tensor, autocast: bool,
             timer: StepTimer) -> Tensor:
        assert self.parts.generators is not None, "start_epoch first"
        return run_step(self.parts, self.model, self.opts, sampler, users_B, rows_BI, self.cfg,
                        autocast=autocast, timer=timer)

    def rank_fn(self) -> RankFn:
        return item_parallel_ranking(self.model, self.layout)

    def full_state(self) -> dict[str, Any]:
        """Gathered from the shards (a collective: every rank calls it); full on rank 0 only,
        in the single-process form, so a checkpoint resumes under any layout."""
        # V_k too: each rank holds only its slice (`parallel.conditions`); scoring needs all of it.
        return {**plain_state(self.model, self.opts), "item_factors": gathered_item_factors(self.model, self.layout)}

    def load_state(self, saved: dict[str, Any]) -> None:
        load_plain_state(self.model, self.opts, saved)

    def cnet_digest(self) -> str:
        """The same on every rank when the data groups agree: the item group's shard digests,
        in item-rank order."""
        mine = digest(local_tensor(p) for p in dense_parameters(self.model))
        shards: list[Any] = [None] * self.layout.item_world
        tdist.all_gather_object(shards, mine, group=self.layout.item_group)
        return hashlib.sha256("".join(shards).encode()).hexdigest()


def item_parallel_mesh(cfg: Config, worker: WorkerContext) -> DeviceMesh:
    """The ("data", "item") mesh of an item-parallel run: item groups of
    `scaling.item_group` ranks (0: all W)."""
    group = cfg.scaling.item_group or worker.world
    if worker.world % group:
        raise ValueError(f"scaling.item_group={group} does not divide the {worker.world} workers")
    return item_mesh(worker.world // group, group, worker.device.type)
