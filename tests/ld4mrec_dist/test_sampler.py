"""Importance sampling of t (Eq. 13): warm-up, p_t, weights, FIFO history updates."""

from __future__ import annotations

import pytest
import torch

from ld4mrec_dist.sampler import importance_weights, init_history, sample_steps, step_probabilities, update_history

FLOOR = 1e-3


def _planted(steps=4, history=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.rand(steps, history, generator=g, dtype=torch.float64) * torch.arange(1, steps + 1)[:, None]
    return table, torch.full((steps,), history, dtype=torch.int64)


def test_init_history():
    table, counts = init_history(5, 10)
    assert table.shape == (5, 10) and table.dtype == torch.float64 and not table.any()
    assert counts.shape == (5,) and counts.dtype == torch.int64 and not counts.any()


def test_uniform_until_full_and_when_disabled():
    table, counts = init_history(3, 2)
    table, counts = update_history(table, counts, torch.tensor([1, 1, 2, 2, 3]), torch.tensor([1.0, 2, 3, 4, 5]))
    torch.testing.assert_close(step_probabilities(table, counts, FLOOR), torch.full((3,), 1 / 3, dtype=torch.float64))
    table, counts = update_history(table, counts, torch.tensor([3]), torch.tensor([9.0]))
    assert not torch.allclose(step_probabilities(table, counts, FLOOR), torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(step_probabilities(table, counts, FLOOR, enabled=False),
                               torch.full((3,), 1 / 3, dtype=torch.float64))


def test_planted_probabilities_closed_form():
    table, counts = _planted()
    rms = table.square().mean(1).sqrt()
    want = (1 - FLOOR) * rms / rms.sum() + FLOOR / 4
    p = step_probabilities(table, counts, FLOOR)
    torch.testing.assert_close(p, want)
    assert p.dtype == torch.float64 and abs(p.sum().item() - 1) < 1e-12


def test_empirical_frequencies_match_p():
    table, counts = _planted()
    p = step_probabilities(table, counts, FLOOR)
    n = 200_000
    t = sample_steps(p, n, torch.Generator().manual_seed(1))
    assert t.dtype == torch.int64 and t.min() >= 1 and t.max() <= 4
    freq = torch.bincount(t - 1, minlength=4).double() / n
    assert torch.all((freq - p).abs() < 5 * (p * (1 - p) / n).sqrt())


def test_weights_unbiased():
    table, counts = _planted()
    p = step_probabilities(table, counts, FLOOR)
    loss_T = torch.tensor([0.3, 1.2, 0.05, 2.0], dtype=torch.float64)
    t_all = torch.arange(1, 5)
    w = importance_weights(p, t_all)
    assert w.dtype == torch.float32
    torch.testing.assert_close((p * w.double() * loss_T).sum(), loss_T.mean(), rtol=1e-6, atol=0)
    t = sample_steps(p, 100_000, torch.Generator().manual_seed(2))
    estimate = (importance_weights(p, t).double() * loss_T[t - 1]).mean()
    assert abs(estimate - loss_T.mean()) < 0.02
    uniform = torch.full((4,), 0.25, dtype=torch.float64)
    assert torch.all(importance_weights(uniform, t_all) == 1.0)


def test_batch_update_equals_sequential():
    g = torch.Generator().manual_seed(3)
    steps, history, n = 4, 3, 50
    t = torch.randint(1, steps + 1, (n,), generator=g)
    loss = torch.rand(n, generator=g, dtype=torch.float64)
    table0, counts0 = init_history(steps, history)
    batch = update_history(table0, counts0, t, loss)
    seq = (table0, counts0)
    for i in range(n):
        seq = update_history(*seq, t[i:i + 1], loss[i:i + 1])
    assert torch.equal(batch[0], seq[0]) and torch.equal(batch[1], seq[1])
    # As the trainer does it: several ranks' values concatenated in rank order, in chunks.
    chunks = update_history(*update_history(table0, counts0, t[:17], loss[:17]), t[17:], loss[17:])
    assert torch.equal(chunks[0], batch[0]) and torch.equal(chunks[1], batch[1])
    # FIFO: each row holds exactly the latest H values of its step.
    for s in range(1, steps + 1):
        latest = loss[t == s][-history:]
        assert sorted(batch[0][s - 1].tolist()) == sorted(latest.tolist())
    assert batch[1].tolist() == torch.bincount(t - 1, minlength=steps).tolist()
    assert not table0.any() and not counts0.any()                 # pure: inputs untouched


def test_update_rejects_bad_steps():
    table, counts = init_history(3, 2)
    with pytest.raises(ValueError):
        update_history(table, counts, torch.tensor([0]), torch.tensor([1.0]))
    with pytest.raises(ValueError):
        update_history(table, counts, torch.tensor([4]), torch.tensor([1.0]))
    same = update_history(table, counts, torch.tensor([], dtype=torch.int64), torch.tensor([]))
    assert torch.equal(same[0], table)
