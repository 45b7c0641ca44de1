"""One training step of Algorithm 1 on one rank, for every engine: the function the loop
runs and the benchmarks time (through the optional `timer`), so the two never drift apart.

`run_step` is the skeleton: forward and loss, backward, gradient sync, z_in's sparse sync,
clipping and the optimizer steps, the sampler history. What differs between the engines is
supplied through `StepParts` (as torchtitan's parallelisms plug into one train step):

- `DataParallelStep` (below): C-Net whole (in DDP when W > 1, which all-reduces its
  gradients inside backward), the loss of this rank's batch, torch's clipping;
- `parallel.item.ItemParallelStep`: C-Net's item layers sharded over an item group, the
  loss summed over the item slices, the dense gradients averaged over the data group,
  clipping over the full (unsharded) norm.

Shapes: B users in the rank's batch (≤ train.batch_size), I items, T diffusion steps,
N = W·B (t, L_rec) pairs gathered over the W ranks (item-parallel: over the data group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from ld4mrec_dist import dist
from ld4mrec_dist.build import Optimizers, dense_parameters
from ld4mrec_dist.config import Config
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.sampler import SamplerHistory
from ld4mrec_dist.timing import StepTimer, untimed


class StepLoss(NamedTuple):
    """What an engine's forward gives the step."""

    local: Tensor
    """Scalar this rank back-propagates (item-parallel: its slice's share of the loss)."""
    loss: Tensor
    """Scalar: the batch's loss (the same on every rank that holds the batch)."""
    t: Tensor
    """int64 [B]: the diffusion steps drawn."""
    rec: Tensor
    """float32 [B]: L_rec per user, detached (what the sampler history records)."""


class StepParts(Protocol):
    """What an engine supplies to `run_step`."""

    @property
    def history_group(self) -> tdist.ProcessGroup | None:
        """The ranks whose (t, L_rec) the history gathers (None: all)."""
        ...

    def param_groups(self) -> list[list[nn.Parameter]]:
        """Adam's parameter groups (`build.build_optimizers`)."""
        ...

    def forward_loss(self, users_B: Tensor, rows_BI: Tensor, p_T: Tensor, autocast: bool) -> StepLoss:
        """Alg. 1 l.3-9: t ~ p_T, the forward process, C-Net's prediction, the loss, reduced
        over whichever ranks share the batch."""
        ...

    def sync_grads(self, params: Sequence[Tensor]) -> None:
        """The dense gradients made equal on every replica after backward."""
        ...

    def clip_grads(self, params: Sequence[Tensor], max_norm: float) -> None:
        """Scale the dense gradients to a total norm of at most `max_norm`."""
        ...


def run_step(parts: StepParts, model: LD4MRec, opts: Optimizers, history: SamplerHistory,
             users_B: Tensor, rows_BI: Tensor, cfg: Config, autocast: bool = False,
             timer: StepTimer | None = None) -> Tensor:
    """Alg. 1 lines 3–13 for one batch; returns the batch's loss (detached scalar).

    `rows_BI`: torch CSR [B, I] on the model's device; `autocast`: C-Net in bfloat16.
    Raises FloatingPointError on a non-finite loss, before any update.
    """
    timed = timer or untimed
    # l.3-8: t ~ p_t, forward process q(x_t | f_s(x_in)), C-Net's prediction, loss (Eq. 13).
    with timed("forward"):
        out = parts.forward_loss(users_B, rows_BI, history.probabilities(cfg.diffusion), autocast)
        if not torch.isfinite(out.loss):
            raise FloatingPointError("non-finite training loss: lower train.lr or enable train.grad_clip")
    # l.10-11: gradients, then made equal across replicas; z_in's synced sparsely.
    with timed("backward"):
        opts.dense.zero_grad(set_to_none=True)
        opts.z_in.zero_grad(set_to_none=True)
        torch.autograd.backward(out.local)
    dense = [p for group in opts.dense.param_groups for p in group["params"]]
    with timed("sync dense"):
        parts.sync_grads(dense)
    with timed("sync z_in"):
        dist.synced_sparse_grad(model.z_in.weight, cfg.train.batch_size)
    with timed("optimizer"):
        if cfg.train.grad_clip > 0:
            parts.clip_grads(dense, cfg.train.grad_clip)
        opts.dense.step()
        opts.z_in.step()
    # l.13: the history update, with every rank's (t, L_rec) in rank order.
    with timed("history"):
        history.record(*dist.gather_step_losses(out.t, out.rec, cfg.train.batch_size, group=parts.history_group))
    return out.loss.detach()


@dataclass
class DataParallelStep:
    """The data-parallel parts: `cnet` is C-Net or its DDP wrapper (`build.wrap_cnet`), whose
    backward all-reduces the gradients; `generator` draws t, the soft-reconstruction mask and ε."""

    model: LD4MRec
    cnet: nn.Module
    generator: torch.Generator
    history_group: tdist.ProcessGroup | None = None

    def param_groups(self) -> list[list[nn.Parameter]]:
        return [dense_parameters(self.model)]

    def forward_loss(self, users_B: Tensor, rows_BI: Tensor, p_T: Tensor, autocast: bool) -> StepLoss:
        with torch.autocast(device_type=self.model.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = self.model(rows_BI, users_B, step_probs=p_T, generator=self.generator, cnet=self.cnet)
        return StepLoss(out.loss, out.loss, out.t, out.rec_loss)

    def sync_grads(self, params: Sequence[Tensor]) -> None:
        """Nothing left to do: DDP all-reduced them during backward (through the strategy's hook)."""

    def clip_grads(self, params: Sequence[Tensor], max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def train_step(model: LD4MRec, cnet: nn.Module, opts: Optimizers, history: SamplerHistory,
               users_B: Tensor, rows_BI: Tensor, generator: torch.Generator, cfg: Config,
               autocast: bool = False, timer: StepTimer | None = None) -> Tensor:
    """`run_step` of the data-parallel parts (what the benchmarks time)."""
    return run_step(DataParallelStep(model, cnet, generator), model, opts, history, users_B, rows_BI, cfg,
                    autocast=autocast, timer=timer)
