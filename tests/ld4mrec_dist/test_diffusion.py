"""Schedule, forward process, posterior and soft reconstruction against closed forms (Eq. 2-12, docs/design.md §2)."""

from __future__ import annotations

import math

import pytest
import torch

from ld4mrec_dist.config import DiffusionSection
from ld4mrec_dist.diffusion import NoiseSchedule, schedule_values, soft_reconstruct


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


def test_soft_reconstruction_statistics_and_values():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(200, 500, generator=g) < 0.3).float()
    p, gamma = 0.2, 0.05
    y = soft_reconstruct(x, p, gamma, g)
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
