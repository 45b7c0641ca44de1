"""build.py: the optimizers the trainer builds (fused Adam gives the default Adam's update)."""

from __future__ import annotations

import copy
import warnings

import torch

from ld4mrec_dist.build import build_optimizers, dense_parameters
from ld4mrec_dist.config import Config, DiffusionSection, ModelSection
from ld4mrec_dist.model import LD4MRec

U, I = 10, 15


def _model() -> LD4MRec:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LD4MRec(ModelSection(hidden=6, svd_rank=3), DiffusionSection(), U, I,
                       item_factors=torch.randn(I, 3, generator=g), item_features={"text": torch.randn(I, 4)},
                       item_degree=torch.ones(I))


def test_fused_adam_takes_the_default_adams_steps():
    """Five steps on the same gradients (with weight decay): parameters equal to 1e-6."""
    fused_cfg, plain_cfg = Config(), Config()
    for cfg in (fused_cfg, plain_cfg):
        cfg.train.lr, cfg.train.weight_decay = 1e-2, 1e-3
    plain_cfg.train.fused_adam = False
    fused_model = _model()
    plain_model = copy.deepcopy(fused_model)
    start = {n: p.detach().clone() for n, p in fused_model.named_parameters()}
    fused, plain = build_optimizers(fused_model, fused_cfg), build_optimizers(plain_model, plain_cfg)
    assert fused.dense.defaults["fused"] is True and not plain.dense.defaults["fused"]
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p, q in zip(dense_parameters(fused_model), dense_parameters(plain_model), strict=True):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        fused.dense.step()
        plain.dense.step()
    for (name, p), q in zip(fused_model.named_parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
        if name != "z_in.weight":   # SparseAdam's, not stepped here
            assert (p - start[name]).abs().max() > 1e-2, name   # it moved: not two untouched models
