"""The learning rate of a step: `train.lr` scaled to the global batch, after the warm-up.

A pure function of (config, data-parallel ranks, global step): nothing to checkpoint, and a
resume at any step sets exactly the rate the uninterrupted run used there.
"""

from __future__ import annotations

import math

from ld4mrec_dist.build import Optimizers
from ld4mrec_dist.config import TrainSection


def scaled_lr(train: TrainSection, data_world: int) -> float:
    """`train.lr` for the global batch G = batch_size × data_world, by `train.lr_scaling`."""
    ratio = train.batch_size * data_world / train.lr_reference_batch
    factor = {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[train.lr_scaling]
    return train.lr * factor


def lr_at_step(train: TrainSection, data_world: int, step: int) -> float:
    """The rate step `step` (0-based, counted over the whole run) uses."""
    warmup = min(1.0, (step + 1) / train.lr_warmup_steps) if train.lr_warmup_steps else 1.0
    return scaled_lr(train, data_world) * warmup


def set_lr(opts: Optimizers, lr: float) -> None:
    """Both optimizers (C-Net's Adam and z_in's SparseAdam) step with `lr`."""
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = lr
