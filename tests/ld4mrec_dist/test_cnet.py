"""C-Net blocks against their equations (Eq. 15–22) and the ablation graphs (docs/design.md §3)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from ld4mrec_dist.cnet import AffineStage, BDBlock, BGBlock, CNet, TimeConcatBlock, scaled_input, timestep_embedding


def test_timestep_embedding_closed_form():
    d = 6
    t = torch.tensor([0, 1, 7])
    z = timestep_embedding(t, d)
    for b, n in enumerate(t.tolist()):
        for j in range(d // 2):
            assert z[b, 2 * j].item() == pytest.approx(math.sin(n / 10000 ** (2 * j / d)), abs=1e-6)
            assert z[b, 2 * j + 1].item() == pytest.approx(math.cos(n / 10000 ** (2 * j / d)), abs=1e-6)


def test_bd_block_equations_and_gate_range():
    torch.manual_seed(0)
    blk = BDBlock(hidden=8, svd_rank=3)
    h, tf, c = torch.randn(5, 8), torch.randn(5, 8) * 3, torch.randn(5, 3)
    w1, b1 = blk.fc_behaviour.weight, blk.fc_behaviour.bias
    assert w1.shape == (8, 16)                          # W1: d × 2d on [h ; t_f]
    b_p = torch.tanh(torch.cat([h, tf], 1) @ w1.T + b1)
    c_p = torch.tanh(c @ blk.fc_collab.weight.T + blk.fc_collab.bias)
    g = torch.sigmoid(tf @ blk.fc_gate.weight.T + blk.fc_gate.bias)
    torch.testing.assert_close(blk(h, tf, c), b_p * (1 - g) + c_p * g)
    gate = blk.gate(tf)
    assert torch.all((gate > 0) & (gate < 1))


def test_affine_stage_starts_near_identity():
    stage = AffineStage(feat_dim=5, hidden=8, negative_slope=0.2)
    gamma, beta = stage.scale_shift(torch.randn(4, 5))
    assert (gamma - 1).abs().max() < 0.05 and beta.abs().max() < 0.05


def test_bg_block_order_and_leaky_between():
    torch.manual_seed(1)
    bg = BGBlock([3, 5], hidden=4, negative_slope=0.2)
    y, e1, e2 = torch.randn(2, 4), torch.randn(2, 3), torch.randn(2, 5)
    g1, b1 = bg.stages[0].scale_shift(e1)
    g2, b2 = bg.stages[1].scale_shift(e2)
    want = g2 * F.leaky_relu(g1 * y + b1, 0.2) + b2
    torch.testing.assert_close(bg(y, [e1, e2]), want)
    with pytest.raises(ValueError):
        bg(y, [e1])


def test_bg_without_modalities_is_identity_and_does_not_warn():
    # The run's start-up lines report a BG-Block without modality (report.modality_lines);
    # a Python warning would only repeat it after the final table.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bg = BGBlock([], hidden=4, negative_slope=0.2)
    y = torch.randn(3, 4)
    assert torch.equal(bg(y, []), y)


@pytest.mark.parametrize("n_items,hidden,dims", [(7, 2, []), (30, 16, [4]), (50, 8, [6, 3, 2])])
def test_cnet_shapes(n_items, hidden, dims):
    net = CNet(n_items, hidden, svd_rank=3, feat_dims=dims)
    x = torch.rand(4, n_items)
    out = net(x, torch.randn(4, hidden), torch.randn(4, 3), [torch.randn(4, d) for d in dims])
    assert out.shape == (4, n_items) and out.dtype == torch.float32


def test_ablation_graphs():
    full = CNet(10, 4, 3, [2, 2])
    assert isinstance(full.denoise, BDBlock) and isinstance(full.generate, BGBlock)
    assert len(full.generate.stages) == 2
    no_bg = CNet(10, 4, 3, [2, 2], ablation="no_bg")
    assert isinstance(no_bg.denoise, BDBlock) and isinstance(no_bg.generate, BDBlock)
    assert not no_bg.uses_modalities
    no_bd = CNet(10, 4, 3, [2], ablation="no_bd")
    assert isinstance(no_bd.denoise, TimeConcatBlock) and isinstance(no_bd.generate, BGBlock)
    assert not no_bd.uses_collaborative
    assert not any("collab" in n for n, _ in no_bd.named_parameters())
    out = no_bd(torch.rand(2, 10), torch.randn(2, 4), None, [torch.randn(2, 2)])
    assert out.shape == (2, 10)
    no_sr = CNet(10, 4, 3, [2, 2], ablation="no_sr")
    assert [n for n, _ in no_sr.named_parameters()] == [n for n, _ in full.named_parameters()]


def test_scaled_input_l2_rows_and_zero_row():
    x = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(scaled_input(x, "l2"), torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 0.0]]))
    assert scaled_input(x, "none") is x
    with pytest.raises(ValueError, match="input_norm"):
        scaled_input(x, "bogus")


def test_cnet_input_norm_makes_fc_in_scale_free():
    torch.manual_seed(0)
    net = CNet(6, 4, 2, [], ablation="no_bd", input_norm="l2").eval()
    x, tf = torch.rand(3, 6), torch.randn(3, 4)
    torch.testing.assert_close(net(x, tf, None, []), net(5.0 * x, tf, None, []))


def test_bg_stage_slope_separate_from_mlp_slope():
    torch.manual_seed(2)
    bg = BGBlock([3, 5], hidden=4, negative_slope=0.2, stage_slope=1.0)   # identity between stages
    assert all(s.negative_slope == 0.2 for s in bg.stages)
    y, e1, e2 = torch.randn(2, 4), torch.randn(2, 3), torch.randn(2, 5)
    g1, b1 = bg.stages[0].scale_shift(e1)
    g2, b2 = bg.stages[1].scale_shift(e2)
    torch.testing.assert_close(bg(y, [e1, e2]), g2 * (g1 * y + b1) + b2)
    net = CNet(10, 4, 3, [3, 5], stage_slope=0.5)
    assert net.generate.negative_slope == 0.5 and net.generate.stages[0].negative_slope == 0.2
