"""Schedule, forward process, posterior and soft reconstruction against closed forms (Eq. 2-12, docs/design.md §2)."""

from __future__ import annotations

import math

import pytest
import torch

from ld4mrec_dist.config import DiffusionSection
from ld4mrec_dist.diffusion import (
    NoiseSchedule,
    SparseTarget,
    bernoulli_positions,
    row_mean_square,
    schedule_values,
    soft_reconstruct,
    sparse_reconstruct,
)


def test_schedule_hand_computed_small_case():
    # T = 3, s = 0.1, α_min = 0.5: 1 − ᾱ = 0.1 · [0.5, 0.75, 1.0]
    v = schedule_values(3, 0.1, 0.5)
    ab = [0.95, 0.925, 0.90]
    alpha = [0.95, 0.925 / 0.95, 0.90 / 0.925]
    beta = [1 - a for a in alpha]
    ab_prev = [1.0, 0.95, 0.925]
    c0 = [math.sqrt(ab_prev[i]) * beta[i] / (1 - ab[i]) for i in range(3)]
    ct = [math.sqrt(alpha[i]) * (1 - ab_prev[i]) / (1 - ab[i]) for i in range(3)]
    for key, want in [("alpha_bar", ab), ("alpha", alpha), ("beta", beta), ("c0", c0), ("ct", ct)]:
        torch.testing.assert_close(v[key], torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    assert v["c0"][0] == 1.0 and v["ct"][0] == 0.0      # t = 1: ᾱ_0 = 1


def test_single_step_schedule():
    v = schedule_values(1, 0.01, 0.05)
    torch.testing.assert_close(v["alpha_bar"], torch.tensor([1 - 0.01 * 0.05], dtype=torch.float64))
    assert v["c0"].tolist() == [1.0] and v["ct"].tolist() == [0.0]
    sched = NoiseSchedule(DiffusionSection(steps=1))
    x = torch.rand(2, 3)
    torch.testing.assert_close(sched.posterior_mean(x, x * 2, torch.ones(2, dtype=torch.int64)), x * 2)


@pytest.mark.parametrize("steps,s,amin", [(5, 0.01, 0.05), (50, 0.5, 0.1), (2, 0.9, 0.99)])
def test_alpha_bar_decreasing_and_valid(steps, s, amin):
    v = schedule_values(steps, s, amin)
    assert (v["alpha_bar"].diff() < 0).all()
    assert ((v["beta"] > 0) & (v["beta"] < 1)).all()
    torch.testing.assert_close(1 - v["alpha_bar"][-1], torch.tensor(s, dtype=torch.float64))


@pytest.mark.parametrize("steps", [1, 2, 5, 20])
def test_posterior_mean_is_bayes_mean(steps):
    """μ̃ = E[x_{t−1} | x_t, x_0], computed from the β's alone by Gaussian conditioning:
    x_{t−1} = √ᾱ_{t−1} x_0 + √(1−ᾱ_{t−1}) ε1,  x_t = √(1−β_t) x_{t−1} + √β_t ε2."""
    v = schedule_values(steps, 0.3, 0.2)
    beta = v["beta"]
    ab = torch.cumprod(1 - beta, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    x0, xt = torch.randn(steps, 7, dtype=torch.float64), torch.randn(steps, 7, dtype=torch.float64)
    cov = (1 - beta).sqrt() * (1 - ab_prev)                 # Cov(x_{t−1}, x_t | x_0)
    var = (1 - beta) * (1 - ab_prev) + beta                 # Var(x_t | x_0)
    bayes = ab_prev.sqrt()[:, None] * x0 + (cov / var)[:, None] * (xt - ab.sqrt()[:, None] * x0)
    ours = v["c0"][:, None] * x0 + v["ct"][:, None] * xt
    torch.testing.assert_close(ours, bayes, rtol=1e-10, atol=1e-12)
    sched = NoiseSchedule(DiffusionSection(steps=steps, noise_scale=0.3, alpha_min=0.2))
    t = torch.arange(1, steps + 1)
    torch.testing.assert_close(sched.posterior_mean(xt.float(), x0.float(), t), bayes.float(), rtol=1e-5, atol=1e-5)


def test_q_sample_and_buffers():
    cfg = DiffusionSection(steps=4)
    sched = NoiseSchedule(cfg)
    v = schedule_values(4, cfg.noise_scale, cfg.alpha_min)
    x, eps = torch.rand(4, 6), torch.randn(4, 6)
    t = torch.tensor([1, 2, 3, 4])
    want = v["alpha_bar"].sqrt()[:, None] * x + (1 - v["alpha_bar"]).sqrt()[:, None] * eps
    torch.testing.assert_close(sched.q_sample(x, t, eps), want.float())
    assert {"c0", "ct", "alpha_bar"} <= set(sched.state_dict())
    assert all(b.dtype == torch.float32 for b in sched.buffers())


def test_rec_loss_equals_mean_difference():
    sched = NoiseSchedule(DiffusionSection(steps=5))
    target, xhat, xt = torch.rand(5, 9), torch.randn(5, 9), torch.randn(5, 9)
    t = torch.arange(1, 6)
    mu_tilde = sched.posterior_mean(xt, target, t)
    mu_theta = sched.posterior_mean(xt, xhat, t)
    torch.testing.assert_close(sched.rec_loss(target, xhat, t), (mu_tilde - mu_theta).square().mean(1))


@pytest.mark.parametrize("dense_draw", [False, True])
def test_soft_reconstruction_statistics_and_values(dense_draw):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(200, 500, generator=g) < 0.3).float()
    p, gamma = 0.2, 0.05
    y = soft_reconstruct(x, p, gamma, g, dense_draw=dense_draw)
    changed = y != x
    clicked = x == 1
    n_c, n_n = clicked.sum().item(), (~clicked).sum().item()
    for frac, n in [(changed[clicked].float().mean().item(), n_c), (changed[~clicked].float().mean().item(), n_n)]:
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert torch.all(y[changed & clicked] == 1 - gamma)
    assert torch.all(y[changed & ~clicked] == gamma)
    assert set(torch.unique(y).tolist()) == set(torch.tensor([0.0, 1.0, gamma, 1 - gamma]).tolist())


def test_soft_reconstruction_off():
    x = (torch.rand(4, 10) < 0.5).float()
    assert soft_reconstruct(x, 0.0, 0.1) is x
    assert soft_reconstruct(x, 0.5, 0.0) is x


def _csr(x_BI: torch.Tensor) -> torch.Tensor:
    return x_BI.to_sparse_csr()


@pytest.mark.parametrize("prob,gamma", [(0.3, 0.1), (0.0, 0.1), (0.3, 0.0), (1.0, 0.2)])
def test_sparse_reconstruct_is_soft_reconstruct_of_the_same_draw(prob, gamma):
    """Same generator state: the same f_s, entry for entry, with clicked, non-clicked,
    stored non-binary values (0.3 ≤ 0.5 counts as non-clicked) and an empty row."""
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(6, 50, generator=g) < 0.2).float()
    x[2] = 0.0
    x[0, 3] = 0.3
    for _ in range(3):                                   # several draws from one stream
        state = g.get_state()
        want = soft_reconstruct(x, prob, gamma, g)
        after_dense = g.get_state()
        g.set_state(state)
        got = sparse_reconstruct(_csr(x), prob, gamma, g)
        assert torch.equal(got.to_dense(), want)
        assert torch.equal(g.get_state(), after_dense)    # the same numbers consumed: ε follows identically
        flat = got.row_Z * 50 + got.col_Z
        assert flat.unique().numel() == flat.numel()      # distinct entries


def test_sparse_reconstruct_sums_duplicate_entries_as_to_dense_does():
    crow, col = torch.tensor([0, 3, 4]), torch.tensor([1, 1, 4, 0])
    csr = torch.sparse_csr_tensor(crow, col, torch.tensor([0.5, 0.5, 1.0, 1.0]), size=(2, 6), check_invariants=False)
    got = sparse_reconstruct(csr, 0.0, 0.1)
    assert torch.equal(got.to_dense(), csr.to_dense()) and got.val_Z.numel() == 3


@pytest.mark.parametrize("chunk", [None, 3])
def test_bernoulli_positions_are_independent_bernoulli_trials(chunk):
    """Every entry chosen with probability p, pairs with p² (independence), the count per
    row Binomial(n, p): checked on 20,000 rows of n = 10 entries drawn as one flat range.
    `chunk=3` forces many rounds of gaps (the loop that a default chunk rarely needs)."""
    rows, n, p = 20_000, 10, 0.3
    pos = bernoulli_positions(rows * n, p, torch.Generator().manual_seed(0), chunk=chunk)
    assert pos.dtype == torch.int64 and torch.all(pos.diff() > 0) and 0 <= pos.min() and pos.max() < rows * n
    chosen = torch.zeros(rows * n)
    chosen[pos] = 1.0
    chosen = chosen.reshape(rows, n)
    sd1 = math.sqrt(p * (1 - p) / rows)
    assert torch.all((chosen.mean(0) - p).abs() < 5 * sd1), chosen.mean(0)   # index 0 and n − 1 too
    pairs = (chosen.T @ chosen / rows)[~torch.eye(n, dtype=torch.bool)]
    sd2 = math.sqrt(p * p * (1 - p * p) / rows)
    assert torch.all((pairs - p * p).abs() < 5 * sd2), pairs
    counts = torch.bincount(chosen.sum(1).long(), minlength=n + 1).double() / rows
    pmf = torch.tensor([math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)], dtype=torch.float64)
    assert torch.all((counts - pmf).abs() < 5 * (pmf * (1 - pmf) / rows).sqrt() + 1e-4), (counts, pmf)


def test_bernoulli_positions_edge_cases():
    assert bernoulli_positions(7, 0.0).numel() == 0 and bernoulli_positions(0, 0.5).numel() == 0
    assert torch.equal(bernoulli_positions(7, 1.0), torch.arange(7))
    g = torch.Generator().manual_seed(3)
    assert all(bernoulli_positions(5, 1e-9, g).numel() == 0 for _ in range(20))
    # the ends of a range, over separate calls: the first gap starts before index 0
    draws, p = 4000, 0.3
    freq = torch.zeros(3)
    for _ in range(draws):
        freq[bernoulli_positions(3, p, g)] += 1.0 / draws
    assert torch.all((freq - p).abs() < 5 * math.sqrt(p * (1 - p) / draws)), freq


def test_q_sample_sparse_in_place_equals_closed_form():
    cfg = DiffusionSection(steps=4)
    sched = NoiseSchedule(cfg)
    g = torch.Generator().manual_seed(0)
    x, eps = (torch.rand(4, 6, generator=g) < 0.4).float(), torch.randn(4, 6, generator=g)
    target = sparse_reconstruct(_csr(x), 0.3, 0.1, g)
    t = torch.tensor([1, 2, 3, 4])
    want = sched.q_sample(target.to_dense(), t, eps)           # √ᾱ·f_s + √(1 − ᾱ)·ε, checked above
    noise = eps.clone()
    got = sched.q_sample_sparse_(target, t, noise)
    assert got is noise
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="noise"):
        sched.q_sample_sparse_(target, t, eps.clone().requires_grad_())


def test_sparse_rec_loss_has_the_formulas_value_and_gradient():
    """rec_loss_ (x̂ overwritten by x̂ − f_s at the target's entries) against the plain
    formula on the dense target: L_rec and ∂(Σ w L_rec)/∂x̂ through a layer before x̂."""
    sched = NoiseSchedule(DiffusionSection(steps=5))
    g = torch.Generator().manual_seed(0)
    target = sparse_reconstruct(_csr((torch.rand(5, 9, generator=g) < 0.3).float()), 0.2, 0.05, g)
    h = torch.randn(5, 9, generator=g).requires_grad_()
    t, w = torch.arange(1, 6), torch.rand(5, generator=g)
    plain = sched.rec_loss(target.to_dense(), h * 2.0, t, fused=False)
    (grad_plain,) = torch.autograd.grad((w * plain).sum(), [h])
    fast = sched.rec_loss_(target, h * 2.0, t)
    (grad_fast,) = torch.autograd.grad((w * fast).sum(), [h])
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grad_fast, grad_plain, rtol=1e-6, atol=1e-8)
    c0 = sched.c0[t - 1][:, None]   # closed form: 2 · 2 w c0² (2h − f_s) / I
    torch.testing.assert_close(grad_fast, 4 * w[:, None] * c0**2 * (2 * h.detach() - target.to_dense()) / 9)


def test_fused_rec_loss_has_the_formulas_value_and_gradients():
    sched = NoiseSchedule(DiffusionSection(steps=5))
    g = torch.Generator().manual_seed(0)
    target = torch.rand(5, 9, generator=g).requires_grad_()
    xhat = torch.randn(5, 9, generator=g).requires_grad_()
    t, w = torch.arange(1, 6), torch.rand(5, generator=g)
    grads = []
    for fused in (False, True):
        rec = sched.rec_loss(target, xhat, t, fused=fused)
        grads.append((rec.detach(), *torch.autograd.grad((w * rec).sum(), [xhat, target])))
    for plain, fast in zip(*grads, strict=True):
        torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-7)
    # closed form of the gradient: ∂/∂x̂ Σ_b w_b c0_b² mean_i (x̂ − y)² = 2 w_b c0_b² (x̂ − y) / I
    c0 = sched.c0[t - 1][:, None]
    torch.testing.assert_close(grads[1][1], 2 * w[:, None] * c0**2 * (xhat - target).detach() / 9)


def test_row_mean_square_refuses_a_second_backward():
    x = torch.randn(3, 4, requires_grad=True)
    err = row_mean_square(x * 1.0)
    err.sum().backward(retain_graph=True)                       # backward scales its saved tensor in place…
    with pytest.raises(RuntimeError, match="inplace"):          # …so a second one must fail, not be wrong
        err.sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach() / 4)
    with pytest.raises(ValueError):
        row_mean_square(torch.zeros(3))
    assert isinstance(sparse_reconstruct(_csr(torch.eye(2)), 0.0, 0.1), SparseTarget)
