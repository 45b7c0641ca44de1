"""The learning-rate rule: closed forms, and a run under the rule equals a run at that lr."""

from __future__ import annotations

import math

import pytest
import torch

from ld4mrec_dist.build import Optimizers
from ld4mrec_dist.config import ConfigError, TrainSection, load_config
from ld4mrec_dist.train.lr_rule import lr_at_step, scaled_lr, set_lr
from ld4mrec_dist.train.trainer import run_training


@pytest.mark.parametrize(("rule", "factor"), [("none", 1.0), ("sqrt", math.sqrt(8.0)), ("linear", 8.0)])
def test_scaled_lr_follows_the_global_batch(rule, factor):
    # G = 512 × 4 ranks = 2048 = 8 × the reference 256
    train = TrainSection(lr=1e-3, batch_size=512, lr_scaling=rule, lr_reference_batch=256)
    assert scaled_lr(train, data_world=4) == pytest.approx(1e-3 * factor, rel=1e-12)


def test_at_the_reference_batch_every_rule_is_the_given_lr():
    for rule in ("none", "sqrt", "linear"):
        assert scaled_lr(TrainSection(lr=3e-4, batch_size=128, lr_scaling=rule, lr_reference_batch=256), 2) == 3e-4


def test_warmup_ramps_linearly_then_holds():
    train = TrainSection(lr=1e-3, batch_size=256, lr_scaling="linear", lr_reference_batch=256, lr_warmup_steps=4)
    rates = [lr_at_step(train, data_world=2, step=s) for s in range(6)]
    assert rates == pytest.approx([0.5e-3, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3])


def test_set_lr_reaches_both_optimizers():
    dense, sparse = torch.nn.Linear(2, 2), torch.nn.Embedding(3, 2, sparse=True)
    opts = Optimizers(torch.optim.Adam(dense.parameters(), lr=1.0), torch.optim.SparseAdam(sparse.parameters(), lr=1.0))
    set_lr(opts, 0.25)
    assert [g["lr"] for o in opts for g in o.param_groups] == [0.25, 0.25]


def test_bad_rule_is_a_config_error():
    with pytest.raises(ConfigError, match="train.lr_scaling"):
        load_config(overrides=["train.lr_scaling=cubic"])


def test_a_scaled_run_is_the_run_at_the_scaled_lr(tmp_path):
    """lr 1e-3 at reference 16, linear rule, batch 32 → exactly the run with lr 2e-3 and no rule."""
    tiny = ["data.synthetic=tiny", f"data.root={tmp_path / 'data'}", f"run.storage={tmp_path / 'runs'}",
            "train.epochs=2", "train.batch_size=32", "model.hidden=16", "model.svd_rank=4", "scaling.num_workers=0"]
    ruled = run_training(load_config(overrides=[*tiny, "run.name=ruled", "train.lr=0.001", "train.lr_scaling=linear",
                                                "train.lr_reference_batch=16"]))
    plain = run_training(load_config(overrides=[*tiny, "run.name=plain", "train.lr=0.002"]))
    other = run_training(load_config(overrides=[*tiny, "run.name=other", "train.lr=0.001"]))
    assert ruled.valid == plain.valid and ruled.test == plain.test
    assert ruled.replica_fingerprints == plain.replica_fingerprints
    assert ruled.replica_fingerprints != other.replica_fingerprints
