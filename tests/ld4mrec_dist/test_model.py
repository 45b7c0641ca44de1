"""LD4MRec end to end on tiny inputs: shapes, gradients, ablations, loss, scoring, state."""

from __future__ import annotations

import warnings

import pytest
import torch

from ld4mrec_dist.cnet import BDBlock, BGBlock, TimeConcatBlock, timestep_embedding
from ld4mrec_dist.config import DiffusionSection, ModelSection
from ld4mrec_dist.diffusion import soft_reconstruct
from ld4mrec_dist.model import BatchLoss, LD4MRec, select_modalities
from ld4mrec_dist.sampler import importance_weights, sample_steps

U, I = 12, 20


def _data(n_items=I, dims=(("text", 5), ("image", 7)), seed=0):
    g = torch.Generator().manual_seed(seed)
    r = (torch.rand(U, n_items, generator=g) < 0.25).float()
    feats = {name: torch.randn(n_items, d, generator=g) for name, d in dims}
    return r, feats, torch.randn(n_items, 4, generator=g), r.sum(0)


def _model(ablation="none", hidden=8, steps=5, dims=(("text", 5), ("image", 7)), n_items=I, **kw):
    r, feats, v, deg = _data(n_items, dims)
    mcfg = ModelSection(hidden=hidden, svd_rank=4, ablation=ablation, **kw)
    dcfg = DiffusionSection(steps=steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LD4MRec(mcfg, dcfg, U, n_items, item_factors=v, item_features=feats, item_degree=deg)
    return model, r


@pytest.mark.parametrize("n_items,hidden,dims", [(20, 8, (("text", 5), ("image", 7))),
                                                 (9, 2, ()), (33, 16, (("image", 3), ("audio", 4), ("text", 2)))])
def test_shapes(n_items, hidden, dims):
    model, r = _model(hidden=hidden, dims=dims, n_items=n_items)
    users = torch.tensor([0, 3, 5])
    out = model(r[users].to_sparse_csr(), users)
    assert isinstance(out, BatchLoss) and out.loss.shape == () and out.loss.dtype == torch.float32
    assert out.t.shape == (3,) and out.t.dtype == torch.int64 and out.rec_loss.shape == (3,)
    assert not out.rec_loss.requires_grad
    assert model.score(r[users].to_sparse_csr(), users).shape == (3, n_items)
    assert model.multi_step_scores(r[users], users).shape == (3, n_items)


def test_modality_selection():
    assert select_modalities(None, ["image", "audio", "text"]) == ["text", "image", "audio"]
    assert select_modalities(["image"], ["text", "image"]) == ["image"]
    with pytest.raises(ValueError):
        select_modalities(["video"], ["text"])
    r, feats, v, deg = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no modality is said in the start-up lines, not warned
        model = LD4MRec(ModelSection(hidden=4, modalities=[]), DiffusionSection(), U, I, item_factors=v,
                        item_features=feats, item_degree=deg)
    assert model.modalities == ()


def test_gradients_reach_every_parameter_and_only_batch_rows_of_z_in():
    model, r = _model()
    users = torch.tensor([1, 4, 4, 9])
    model(r[users].to_sparse_csr(), users).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name != "z_in.weight":
            assert p.grad.abs().sum() > 0, name
    grad = model.z_in.weight.grad
    assert grad.is_sparse
    rows = set(grad.coalesce().indices().flatten().tolist())
    assert rows == {1, 4, 9}


def test_shared_time_vector():
    model, r = _model(per_user_time=False)
    assert model.z_in.weight.shape == (1, 8)
    users = torch.tensor([2, 7])
    model(r[users], users).loss.backward()
    assert model.z_in.weight.grad.coalesce().indices().flatten().tolist() == [0]
    torch.testing.assert_close(model.z_in.weight.detach()[0], timestep_embedding(torch.zeros(1), 8)[0])


def test_ablations_build_their_graphs():
    full, _ = _model()
    assert isinstance(full.cnet.denoise, BDBlock) and isinstance(full.cnet.generate, BGBlock)
    no_bg, _ = _model("no_bg")
    assert isinstance(no_bg.cnet.generate, BDBlock) and no_bg.modalities == ()
    assert not any(n.startswith("item_feature") for n, _ in no_bg.named_buffers())
    no_bd, r = _model("no_bd")
    assert isinstance(no_bd.cnet.denoise, TimeConcatBlock) and not hasattr(no_bd, "item_factors")
    users = torch.arange(3)
    c, prefs = no_bd.conditions(r[users].to_sparse_csr())
    assert c is None and len(prefs) == 2
    LD4MRec(ModelSection(hidden=4, ablation="no_bd", modalities=[]), DiffusionSection(), U, I)   # no SVD needed
    no_sr, r = _model("no_sr")
    x = r[:4]
    no_sr.diffusion_cfg.sr_prob = full.diffusion_cfg.sr_prob = 0.5
    assert no_sr.reconstruction_target(x) is x                # plain MSE target
    assert not torch.equal(full.reconstruction_target(x), x)  # f_s(x_in)


def _grads(model: LD4MRec, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: (q.grad.to_dense() if q.grad.is_sparse else q.grad).clone() for n, q in model.named_parameters()
            if q.grad is not None}


@pytest.mark.parametrize("fused", [True, False])
def test_loss_and_gradients_match_manual_computation(fused):
    """Same generator, same draw order (t, mask, ε): the loss is Σ w·c0²·mean((f_s(x) − x̂)²)/B
    with x_t = √ᾱ f_s(x) + √(1 − ᾱ) ε, and so are its gradients, in the fused forward
    (model.fused_forward, the default) and in the straightforward one."""
    model, r = _model(steps=4, fused_forward=fused)
    model.diffusion_cfg.sr_prob = 0.3
    users = torch.tensor([0, 2, 5, 6, 11])
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    out = model(r[users].to_sparse_csr(), users, step_probs=p, generator=torch.Generator().manual_seed(5))
    got = _grads(model, out.loss)
    g = torch.Generator().manual_seed(5)
    x = r[users]
    t = sample_steps(p, 5, g)
    target = soft_reconstruct(x, 0.3, model.diffusion_cfg.sr_gamma, g, dense_draw=not fused)
    eps = torch.randn(x.shape, generator=g)
    ab = model.schedule.alpha_bar[t - 1][:, None]
    xt = ab.sqrt() * target + (1 - ab).sqrt() * eps
    c, prefs = model.conditions(x.to_sparse_csr())
    tf = timestep_embedding(t, 8) + model.z_in(users)
    xhat = model.cnet(xt, tf, c, prefs)
    rec = model.schedule.c0[t - 1] ** 2 * (target - xhat).square().mean(1)
    assert torch.equal(out.t, t)
    torch.testing.assert_close(out.rec_loss, rec.detach())
    loss = (importance_weights(p, t) * rec).mean()
    torch.testing.assert_close(out.loss, loss)
    want = _grads(model, loss)
    assert set(got) == set(want) == {n for n, _ in model.named_parameters()}
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)
    uniform = model(x, users, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(uniform.loss, uniform.rec_loss.mean())


@pytest.mark.parametrize("sr_prob", [0.0, 0.3])
def test_fused_forward_equals_the_straightforward_one(sr_prob):
    """Without soft reconstruction both forms draw the same numbers (t, then ε): equal
    loss, L_rec and gradients. With it, only the mask's stream differs: every other
    number is the same once the fused form's mask is fed to the straightforward formulas
    (the test above); here the two L_rec agree in law only, so only shapes are compared."""
    outs, grads = [], []
    for fused in (False, True):
        torch.manual_seed(0)                                # the same initial weights
        model, r = _model(steps=4, fused_forward=fused)
        model.diffusion_cfg.sr_prob = sr_prob
        users = torch.tensor([1, 3, 4, 8])
        out = model(r[users].to_sparse_csr(), users, generator=torch.Generator().manual_seed(9))
        outs.append(out)
        grads.append(_grads(model, out.loss))
    assert torch.equal(outs[0].t, outs[1].t)
    if sr_prob == 0.0:
        torch.testing.assert_close(outs[1].rec_loss, outs[0].rec_loss, rtol=1e-6, atol=1e-8)
        for name in grads[0]:
            torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)
    else:
        assert outs[0].rec_loss.shape == outs[1].rec_loss.shape and set(grads[0]) == set(grads[1])


def test_loss_falls_over_100_steps():
    torch.manual_seed(0)
    model, r = _model(hidden=16)
    users = torch.arange(8)
    rows = r[users].to_sparse_csr()
    dense_params = [p for n, p in model.named_parameters() if n != "z_in.weight"]
    opt = torch.optim.Adam(dense_params, lr=1e-3)
    sparse_opt = torch.optim.SparseAdam([model.z_in.weight], lr=1e-3)
    g = torch.Generator()
    losses = []
    for _ in range(100):
        g.manual_seed(0)                                   # a fixed batch: same t, mask and ε
        out = model(rows, users, generator=g)
        opt.zero_grad(), sparse_opt.zero_grad()
        out.loss.backward()
        opt.step(), sparse_opt.step()
        losses.append(out.loss.item())
    blocks = torch.tensor(losses).reshape(10, 10).mean(1)
    assert torch.all(blocks.diff() < 0), blocks
    assert losses[-1] < 0.5 * losses[0]


def test_score_deterministic_and_one_step():
    model, r = _model(dropout=0.5)
    model.train()
    users = torch.tensor([0, 1, 2])
    rows = r[users].to_sparse_csr()
    s1, s2 = model.score(rows, users), model.score(rows, users)
    assert torch.equal(s1, s2) and s1.dtype == torch.float32 and not s1.requires_grad
    c, prefs = model.conditions(rows)
    model.eval()
    with torch.no_grad():
        want = model.cnet(r[users], model.z_in.weight[users], c, prefs)
    torch.testing.assert_close(s1, want)
    assert torch.equal(model.multi_step_scores(rows, users), model.multi_step_scores(rows, users))


def test_multi_step_single_step_reduces_to_xhat():
    model, r = _model(steps=3)
    users = torch.tensor([4, 5])
    x = r[users]
    c, prefs = model.conditions(x.to_sparse_csr())
    t = torch.ones(2, dtype=torch.int64)
    with torch.no_grad():
        want = model.cnet(model.schedule.sqrt_alpha_bar[0] * x, timestep_embedding(t, 8) + model.z_in.weight[users],
                          c, prefs)
    torch.testing.assert_close(model.multi_step_scores(x, users, steps=1), want)
    with pytest.raises(ValueError):
        model.multi_step_scores(x, users, steps=4)


def test_state_dict_excludes_data_buffers_and_round_trips():
    model, r = _model()
    keys = set(model.state_dict())
    assert "z_in.weight" in keys and "schedule.c0" in keys
    assert not any(k.startswith("item_") for k in keys)
    assert {"item_factors", "item_degree", "item_feature_0", "item_feature_1"} <= {n for n, _ in model.named_buffers()}
    other, _ = _model()
    torch.nn.init.zeros_(other.cnet.fc_out.weight)
    other.load_state_dict(model.state_dict())
    users = torch.arange(4)
    torch.testing.assert_close(other.score(r[users], users), model.score(r[users], users))


def test_bf16_autocast_keeps_loss_float32():
    model, r = _model()
    users = torch.arange(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(r[users].to_sparse_csr(), users)
        scores = model.score(r[users].to_sparse_csr(), users)
    assert out.loss.dtype == torch.float32 and out.rec_loss.dtype == torch.float32
    assert scores.dtype == torch.float32
    out.loss.backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model, r = _model()
    users = torch.arange(5)
    cpu_scores = model.score(r[users], users)
    model.cuda()
    assert all(b.is_cuda for b in model.buffers())
    gpu = model.score(r[users].cuda().to_sparse_csr(), users.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu_scores, rtol=1e-3, atol=1e-4)
    out = model(r[users].cuda().to_sparse_csr(), users.cuda(),
                step_probs=torch.full((5,), 0.2, dtype=torch.float64),
                generator=torch.Generator(device="cuda").manual_seed(0))
    out.loss.backward()
    assert out.t.is_cuda


@pytest.mark.parametrize("feature_norm", ["standardize", "l2"])
def test_conditions_apply_collab_and_feature_norms(feature_norm):
    model, r = _model(collab_norm="history", feature_norm=feature_norm, input_norm="l2")
    r_csr = r[:4].to_sparse_csr()
    c, prefs = model.conditions(r_csr)
    n_u = r[:4].sum(1, keepdim=True).clamp_min(1.0)
    torch.testing.assert_close(c, (r[:4] @ model.item_factors) / n_u.sqrt())
    feat = model.item_feature(0)
    if feature_norm == "standardize":
        feat_s = (feat - feat.mean(0)) / feat.std(0, unbiased=False)
    else:
        feat_s = feat / feat.norm(dim=1, keepdim=True)
    w = r[:4] / (n_u * model.item_degree.clamp_min(1.0)).sqrt()    # Eq. 14's weights, dense
    torch.testing.assert_close(prefs[0], w @ feat_s, rtol=1e-5, atol=1e-5)
    assert not any("item_feature" in k for k in model.state_dict())  # data-derived, not saved


def test_new_model_fields_are_validated():
    from ld4mrec_dist.config import ConfigError
    for field, bad in (("input_norm", "l1"), ("collab_norm", "sqrt"), ("feature_norm", "pca")):
        with pytest.raises(ConfigError, match=f"model.{field}"):
            ModelSection(**{field: bad})
