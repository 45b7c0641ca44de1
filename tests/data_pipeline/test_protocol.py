"""The protocol of docs/design.md §4: rating filter, merging, chronological split, noise, accounting."""

import numpy as np
import pytest

from data_pipeline.errors import DataError
from data_pipeline.manifest import check_accounting
from data_pipeline.protocol import ProtocolConfig, apply_protocol


def table(n_users=20, n_items=50, per_user=12, seed=0):
    """Users each with `per_user` distinct items, random ratings 1..5, shuffled rows."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.permutation(n_items)[:per_user] for _ in range(n_users)])
    rating = rng.integers(1, 6, users.size).astype(float)
    ts = rng.permutation(users.size).astype(float)
    return users, items, n_items, rating, ts


def pairs(result, split):
    u, i = result.splits[split]
    return set(zip(u.tolist(), i.tolist(), strict=True))


def test_clean_filters_merges_and_splits_chronologically():
    users = np.array([0] * 11 + [1] * 3)
    items = np.array(list(range(10)) + [3, 0, 1, 2])        # (0, 3) twice
    rating = np.array([5.0] * 10 + [4, 5, 2, 5])
    ts = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 100, 1, 2, 3], float)
    r = apply_protocol(users, items, 10, rating, ts, None, "clean")
    c = r.counts
    assert (c["input_rows"], c["kept"], c["filtered_by_rating"], c["duplicates_merged"]) == (14, 12, 1, 1)
    assert pairs(r, "test") == {(0, 0), (1, 2)}              # the latest; user 1 keeps 2 rows: train + test
    assert pairs(r, "valid") == {(0, 1)}
    assert {i for u, i in pairs(r, "train") if u == 0} == set(range(2, 10))
    assert (1, 0) in pairs(r, "train") and r.split_source == "chronological"
    check_accounting(c)


@pytest.mark.parametrize("n, expected", [(1, (1, 0, 0)), (3, (1, 1, 1)), (5, (3, 1, 1)), (8, (6, 1, 1)),
                                         (10, (8, 1, 1)), (20, (16, 2, 2))])
def test_split_proportions_per_user(n, expected):
    users = np.concatenate([np.zeros(n, int), np.ones(10, int)])   # user 1 keeps splits non-empty
    items = np.concatenate([np.arange(n), np.arange(10)])
    r = apply_protocol(users, items, 30, None, None, None, "clean")
    got = tuple(int((r.splits[s][0] == 0).sum()) for s in ("train", "valid", "test"))
    assert got == expected


def test_source_split_is_kept_and_users_without_train_counted():
    users = np.array([0, 0, 0, 1])
    items = np.array([0, 1, 2, 3])
    split = np.array([0, 1, 2, 2], np.int8)
    r = apply_protocol(users, items, 4, None, None, split, "clean")
    assert pairs(r, "test") == {(0, 2), (1, 3)} and r.split_source == "source"
    assert r.counts["users_without_train"] == 1


def test_empty_split_is_an_error():
    with pytest.raises(DataError, match="valid split is empty"):
        apply_protocol(np.zeros(2, int), np.arange(2), 2, None, None, None, "clean")  # 1 train, 1 test


def test_as_is_keeps_every_rating():
    u, i, n_items, rating, ts = table()
    r = apply_protocol(u, i, n_items, rating, ts, None, "as_is")
    assert r.counts["kept"] == u.size and r.counts["filtered_by_rating"] == 0


def test_noisy_keeps_test_and_injects_exact_counts():
    u, i, n_items, rating, ts = table()
    clean = apply_protocol(u, i, n_items, rating, ts, None, "clean")
    noisy = apply_protocol(u, i, n_items, rating, ts, None, "noisy", ProtocolConfig(noise_ratio=0.2), seed=3)
    for a, b in zip(clean.splits["test"], noisy.splits["test"], strict=True):
        np.testing.assert_array_equal(a, b)
    low = set(zip(u[rating < 4].tolist(), i[rating < 4].tolist(), strict=True))
    touched = set(zip(u.tolist(), i.tolist(), strict=True))
    by_split = noisy.counts["injected_noise"]["by_split"]
    for split in ("train", "valid"):
        n_clean = clean.counts["rows_per_split"][split]
        added = pairs(noisy, split) - pairs(clean, split)
        assert pairs(noisy, split) >= pairs(clean, split)
        assert len(added) == int(np.floor(0.2 * n_clean + 0.5)) == sum(by_split[split].values())
        natural = added & low
        assert len(natural) == by_split[split]["natural"] <= int(np.floor(0.5 * len(added) + 0.5))
        assert not (added - natural) & touched                  # random noise: never-touched items
    assert not pairs(noisy, "train") & pairs(noisy, "valid")
    check_accounting(noisy.counts)


def test_noisy_is_deterministic_for_a_seed():
    args = table()
    a = apply_protocol(*args, None, "noisy", seed=1)
    b = apply_protocol(*args, None, "noisy", seed=1)
    c = apply_protocol(*args, None, "noisy", seed=2)
    assert pairs(a, "train") == pairs(b, "train") != pairs(c, "train")


def test_noisy_without_ratings_is_all_random():
    u, i, n_items, _, ts = table()
    r = apply_protocol(u, i, n_items, None, ts, None, "noisy")
    assert r.counts["injected_noise"]["natural"] == 0 and r.counts["injected_noise"]["random"] > 0


def test_accounting_mismatch_is_caught():
    u, i, n_items, rating, ts = table()
    counts = apply_protocol(u, i, n_items, rating, ts, None, "clean").counts
    counts["kept"] -= 1
    with pytest.raises(RuntimeError, match="accounting"):
        check_accounting(counts)


def test_config_validates():
    with pytest.raises(DataError, match="split ratios"):
        ProtocolConfig(split_ratios=(0.5, 0.1, 0.1))
    with pytest.raises(DataError, match="noise ratio"):
        ProtocolConfig(noise_ratio=2)


@pytest.mark.parametrize("ratio, share", [(0.1, 0.5), (0.3, 0.5), (0.3, 0.0), (0.0, 0.5)])
def test_noise_ratio_and_share_accounting(ratio, share):
    u, i, n_items, rating, ts = table(n_users=30, n_items=80, per_user=20)
    clean = apply_protocol(u, i, n_items, rating, ts, None, "clean")
    noisy = apply_protocol(u, i, n_items, rating, ts, None, "noisy",
                           ProtocolConfig(noise_ratio=ratio, natural_share=share))
    by_split = noisy.counts["injected_noise"]["by_split"]
    for split in ("train", "valid"):
        n_clean = clean.counts["rows_per_split"][split]
        n_noise = int(np.floor(ratio * n_clean + 0.5))
        assert sum(by_split[split].values()) == n_noise == noisy.counts["rows_per_split"][split] - n_clean
        assert by_split[split]["natural"] <= int(np.floor(share * n_noise + 0.5))
    total = noisy.counts["injected_noise"]
    assert total["natural"] + total["random"] == sum(sum(v.values()) for v in by_split.values())
    if share == 0:
        assert total["natural"] == 0 and total["random"] > 0       # the all-random variant
    if ratio > 0 and share > 0:
        assert total["natural"] > 0
    check_accounting(noisy.counts)


def test_all_random_noise_uses_only_untouched_items():
    u, i, n_items, rating, ts = table(n_users=30, n_items=80, per_user=20)
    noisy = apply_protocol(u, i, n_items, rating, ts, None, "noisy", ProtocolConfig(noise_ratio=0.3, natural_share=0))
    clean = apply_protocol(u, i, n_items, rating, ts, None, "clean")
    touched = set(zip(u.tolist(), i.tolist(), strict=True))
    for split in ("train", "valid"):
        assert not (pairs(noisy, split) - pairs(clean, split)) & touched


def test_share_is_validated():
    with pytest.raises(DataError, match="natural noise share"):
        ProtocolConfig(natural_share=1.5)
