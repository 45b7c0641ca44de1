"""One training step of Algorithm 1 on one rank: the function the loop runs and the
benchmarks time (through the optional `timer`), so the two never drift apart.

Shapes: B users in the rank's batch (≤ train.batch_size), I items, T diffusion steps,
N = W·B (t, L_rec) pairs gathered over the W ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ld4mrec_dist import dist
from ld4mrec_dist.build import Optimizers
from ld4mrec_dist.config import Config
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.sampler import SamplerHistory
from ld4mrec_dist.timing import StepTimer, untimed


def train_step(model: LD4MRec, cnet: nn.Module, opts: Optimizers, history: SamplerHistory,
               users_B: Tensor, rows_BI: Tensor, generator: torch.Generator, cfg: Config,
               autocast: bool = False, timer: StepTimer | None = None) -> Tensor:
    """Alg. 1 lines 3–13 for one batch; returns the batch's loss (detached scalar).

    `cnet`: C-Net or its DDP wrapper (`build.wrap_cnet`). `rows_BI`: torch CSR [B, I] on
    the model's device. Raises FloatingPointError on a non-finite loss, before any update.
    """
    timed = timer or untimed
    device = model.device
    # l.3-8: t ~ p_t, forward process q(x_t | f_s(x_in)), C-Net's prediction, loss (Eq. 13).
    with timed("forward"):
        p_T = history.probabilities(cfg.diffusion)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(rows_BI, users_B, step_probs=p_T, generator=generator, cnet=cnet)
        if not torch.isfinite(out.loss):
            raise FloatingPointError("non-finite training loss: lower train.lr or enable train.grad_clip")
    # l.10-11: gradients (DDP all-reduces C-Net's during backward), z_in's synced sparsely.
    with timed("backward"):
        opts.dense.zero_grad(set_to_none=True)
        opts.z_in.zero_grad(set_to_none=True)
        out.loss.backward()
    with timed("sync z_in"):
        dist.synced_sparse_grad(model.z_in.weight, cfg.train.batch_size)
    with timed("optimizer"):
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(opts.dense.param_groups[0]["params"], cfg.train.grad_clip)
        opts.dense.step()
        opts.z_in.step()
    # l.13: the history update, with every rank's (t, L_rec) in rank order.
    with timed("history"):
        history.record(*dist.gather_step_losses(out.t, out.rec_loss, cfg.train.batch_size))
    return out.loss.detach()
