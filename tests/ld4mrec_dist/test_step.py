"""The one training step (Alg. 1 l.3-13) on a single rank: what it updates, what it times,
and that a non-finite loss stops it before any update."""

import pytest
import torch

from ld4mrec_dist.build import build_optimizers
from ld4mrec_dist.config import DiffusionSection, ModelSection, load_config
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.sampler import SamplerHistory
from ld4mrec_dist.step import train_step
from ld4mrec_dist.timing import PieceTimer

U, I, T = 6, 10, 4


def _setup(lr: float = 1e-2):
    torch.manual_seed(0)
    cfg = load_config(None, [f"diffusion.steps={T}", "diffusion.history=2", "model.hidden=8", "model.svd_rank=3",
                             "train.batch_size=4", f"train.lr={lr}"])
    feats = {"text": torch.randn(I, 5)}
    model = LD4MRec(ModelSection(hidden=8, svd_rank=3), DiffusionSection(steps=T, history=2), U, I,
                    item_factors=torch.randn(I, 3), item_features=feats, item_degree=torch.ones(I))
    rows = (torch.rand(4, I) < 0.4).float()
    rows[:, 0] = 1.0  # no empty row
    return cfg, model, build_optimizers(model, cfg), rows.to_sparse_csr(), torch.tensor([0, 2, 3, 5])


def test_a_step_updates_cnet_the_batchs_z_in_rows_and_the_history():
    cfg, model, opts, rows, users = _setup()
    sampler = SamplerHistory.empty(model.schedule.steps, cfg.diffusion)
    assert sampler.table_TH.shape == (T, 2)  # T from the model's schedule
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    timer = PieceTimer()
    loss = train_step(model, model.cnet, opts, sampler, users, rows, torch.Generator().manual_seed(1), cfg,
                      timer=timer)
    assert loss.dim() == 0 and torch.isfinite(loss) and not loss.requires_grad
    assert int(sampler.counts_T.sum()) == 4  # one (t, L_rec) per user of the batch
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "cnet.fc_out.weight" in changed and "z_in.weight" in changed
    untouched = [1, 4]  # users outside the batch keep their z_in rows
    torch.testing.assert_close(model.z_in.weight[untouched], before["z_in.weight"][untouched])
    assert {"forward", "backward", "sync z_in", "optimizer", "history"} <= set(timer.total)


def test_a_non_finite_loss_stops_before_any_update():
    cfg, model, opts, rows, users = _setup()
    with torch.no_grad():
        model.cnet.fc_out.bias.fill_(float("nan"))
    before = [p.detach().clone() for p in model.parameters()]
    sampler = SamplerHistory.empty(model.schedule.steps, cfg.diffusion)
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        train_step(model, model.cnet, opts, sampler, users, rows, torch.Generator().manual_seed(1), cfg)
    for p, b in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p, b, equal_nan=True)
    assert int(sampler.counts_T.sum()) == 0
