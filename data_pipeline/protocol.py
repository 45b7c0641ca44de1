"""The protocol of docs/design.md §4: clean, noisy and as-is settings over one interaction table.

clean   drop rating < min_rating (when ratings exist), merge duplicate (user, item) rows
        (the earliest is kept), keep the source split when there is one, else split each
        user's interactions chronologically 8:1:1 (the latest go to test).
noisy   the clean splits, then train and valid each get round(noise_ratio × their clean
        count) injected interactions, test untouched. Noise is allocated to users in
        proportion to their clean rows (a uniform sample of clean rows picks the users);
        a `natural_share` of the slots take the user's own low-rated interactions from the
        same period (per user: up to the last train timestamp = train, up to the last
        valid timestamp = valid; with a source split, the row's own label), the rest, and
        any natural slot the user cannot fill, take items the user never touched, uniformly.
as_is   every row kept (no rating filter); duplicates are still merged and counted, since
        a dataset row is a set of items. The source split is kept, else chronological.

Per-user chronological split: n_train = ⌊r_train·n + ½⌋ (at least 1), the remaining r rows
give ⌊r·r_valid/(r_valid + r_test)⌋ to valid and the rest to test, so a user with 5 rows
has 4/0/1, with 8 rows 6/1/1, with 10 rows 8/1/1. Ties in time keep input row order.

Deterministic for a seed: every random draw comes from one generator in a fixed order.
Shapes: N input rows, K kept rows, U user codes, I items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.source import SPLIT_NAMES

SETTINGS = ("clean", "noisy", "as_is")


# Bumped whenever the same input and config would give other splits: datasets prepared
# by an older protocol are then not reused (see prepare.reusable).
PROTOCOL_VERSION = 2


@dataclass(frozen=True)
class ProtocolConfig:
    min_rating: float = 4.0
    """Clean keeps rating ≥ this (paper §4.1: drop rating < 4)."""
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Train/valid/test shares of each user's chronological split (ignored with a source split)."""
    noise_ratio: float = 0.1
    """Noisy: injected rows per split as a fraction of its clean count (paper Table 1: 10 %)."""
    natural_share: float = 0.5
    """Noisy: share of injected rows that are the user's own low-rated interactions."""

    def __post_init__(self) -> None:
        if len(self.split_ratios) != 3 or min(self.split_ratios) < 0 or self.split_ratios[0] <= 0 \
                or abs(sum(self.split_ratios) - 1) > 1e-6:
            raise DataError(f"split ratios {self.split_ratios}: need three non-negative shares summing to 1, "
                            "train > 0 (e.g. 0.8 0.1 0.1)")
        if not 0 <= self.noise_ratio <= 1:
            raise DataError(f"noise ratio {self.noise_ratio}: must be in [0, 1]")
        if not 0 <= self.natural_share <= 1:
            raise DataError(f"natural noise share {self.natural_share}: must be in [0, 1]")

    def as_dict(self) -> dict[str, Any]:
        return {"version": PROTOCOL_VERSION, "min_rating": self.min_rating, "split_ratios": list(self.split_ratios),
                "noise_ratio": self.noise_ratio, "natural_share": self.natural_share}


@dataclass
class ProtocolResult:
    """Rows per split as (user code [n], item [n]) sorted by (user, item), and the counts."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    counts: dict[str, Any]
    split_source: str
    """"source" (kept from the input) or "chronological"."""
    chronology: str
    """"timestamp" or "row_order" (no timestamps in the source)."""
    users: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    """Sorted user codes that keep ≥ 1 interaction (the dataset's users, in index order)."""


def apply_protocol(user_N: np.ndarray, item_N: np.ndarray, n_items: int, rating: np.ndarray | None,
                   timestamp: np.ndarray | None, split: np.ndarray | None, setting: str,
                   cfg: ProtocolConfig = ProtocolConfig(), seed: int = 2024, *,
                   whole_log: bool = True) -> ProtocolResult:
    """Run the protocol on integer user codes and item indices (one entry per input row).

    `whole_log=False`: the rows are every row of *some* users (a bucket of the streaming
    path, rows in input order); clean and as_is are per-user, so the result is that of the
    whole log restricted to these users. Empty splits are then the caller's to refuse
    (`check_splits` on the summed counts), and noisy is refused: its draws span the log."""
    if setting not in SETTINGS:
        raise DataError(f"setting {setting!r}: choose one of {SETTINGS}")
    if setting == "noisy" and not whole_log:
        raise ValueError("noisy draws its noise over the whole log: apply it to every row at once")
    n = user_N.size
    ts = timestamp if timestamp is not None else np.arange(n, dtype=np.float64)
    chrono = np.lexsort((np.arange(n), ts, user_N))                                # [N] rows by (user, time)
    high = np.ones(n, bool) if rating is None or setting == "as_is" else rating >= cfg.min_rating
    kept = first_per_pair(chrono[high[chrono]], user_N, item_N, n_items)           # [K] rows, chronological
    label = split[kept].astype(np.int8) if split is not None else chronological_labels(user_N[kept], cfg)
    counts = {"input_rows": int(n), "kept": int(kept.size), "filtered_by_rating": int((~high).sum()),
              "duplicates_merged": int(high.sum() - kept.size), "dropped": {}}
    if whole_log:
        check_splits({s: int((label == c).sum()) for c, s in enumerate(SPLIT_NAMES)}, split is not None)
    rng = np.random.default_rng(seed)
    noise = {s: (np.empty(0, np.int64), np.empty(0, np.int64)) for s in SPLIT_NAMES}
    noise_counts = {s: {"natural": 0, "random": 0} for s in SPLIT_NAMES[:2]}
    if setting == "noisy":
        low = low_pool(chrono[~high[chrono]], kept, label, user_N, item_N, ts, split, n_items)
        forbidden = np.unique(np.concatenate([user_N * n_items + item_N]))
        for code, name in enumerate(SPLIT_NAMES[:2]):
            rows = kept[label == code]
            nat, rnd = inject_noise(rng, user_N[rows], low[code], forbidden, n_items, cfg)
            noise[name] = (np.concatenate([nat[0], rnd[0]]), np.concatenate([nat[1], rnd[1]]))
            noise_counts[name] = {"natural": int(nat[0].size), "random": int(rnd[0].size)}
            forbidden = np.union1d(forbidden, noise[name][0] * n_items + noise[name][1])
    splits = {}
    for code, name in enumerate(SPLIT_NAMES):
        rows = kept[label == code]
        splits[name] = sorted_pairs(np.concatenate([user_N[rows], noise[name][0]]),
                                    np.concatenate([item_N[rows], noise[name][1]]))
    users = np.unique(user_N[kept])
    train_users = np.unique(splits["train"][0])
    counts["kept_per_split"] = {s: int((label == c).sum()) for c, s in enumerate(SPLIT_NAMES)}
    counts["rows_per_split"] = {s: int(splits[s][0].size) for s in SPLIT_NAMES}
    counts["injected_noise"] = {
        "natural": sum(v["natural"] for v in noise_counts.values()),
        "random": sum(v["random"] for v in noise_counts.values()), "by_split": noise_counts}
    counts["users_without_train"] = int(users.size - train_users.size)
    return ProtocolResult(splits, counts, "source" if split is not None else "chronological",
                          "timestamp" if timestamp is not None else "row_order", users)


def first_per_pair(rows: np.ndarray, user_N: np.ndarray, item_N: np.ndarray, n_items: int) -> np.ndarray:
    """The first row (in the given order) of each (user, item) pair, order preserved."""
    keys = user_N[rows] * n_items + item_N[rows]
    _, first = np.unique(keys, return_index=True)
    return rows[np.sort(first)]


def chronological_labels(user_K: np.ndarray, cfg: ProtocolConfig) -> np.ndarray:
    """[K] int8 0/1/2 for rows sorted by (user, time): each user's first share train, latest test.

    Shares are rounded per user with one row each for test (from 2 rows on) and valid
    (from 3 rows on) when their ratio is positive: a 5-row user gets 3/1/1, a 10-row user
    8/1/1, a 20-row user 16/2/2. Plain rounding of 8:1:1 would leave every user with fewer
    than 8 rows without a valid row, and valid half the size of test.
    """
    _, start, n_u = np.unique(user_K, return_index=True, return_counts=True)
    n = np.repeat(n_u, n_u)
    rank = np.arange(user_K.size) - np.repeat(start, n_u)
    _, r_valid, r_test = cfg.split_ratios
    n_test = np.where((n >= 2) & (r_test > 0), np.maximum(1, np.floor(r_test * n + 0.5)), 0)
    n_valid = np.where((n >= 3) & (r_valid > 0), np.maximum(1, np.floor(r_valid * n + 0.5)), 0)
    n_train = n - n_test - n_valid  # ≥ 1: the shares sum to 1 and train's is positive
    return np.where(rank < n_train, 0, np.where(rank < n_train + n_valid, 1, 2)).astype(np.int8)


def check_splits(kept_per_split: dict[str, int], from_source: bool) -> None:
    """DataError when a split ends up empty."""
    for code, name in enumerate(SPLIT_NAMES):
        if not kept_per_split[name]:
            why = ("the source split (x_label / split column) has no rows labelled "
                   f"{code}; fix the labels or drop the split column" if from_source else
                   "users have too few interactions for the split (a user needs ≥ 2 rows to reach test, "
                   "≥ 3 to reach valid); use a denser source or other --split-ratios")
            raise DataError(f"the {name} split is empty after the protocol: {why}")


def low_pool(low_rows: np.ndarray, kept: np.ndarray, label: np.ndarray, user_N: np.ndarray, item_N: np.ndarray,
             ts: np.ndarray, split: np.ndarray | None, n_items: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Natural-noise candidates per period 0/1: (users, items) of low-rated pairs the user never kept."""
    low = first_per_pair(low_rows, user_N, item_N, n_items)
    kept_keys = np.sort(user_N[kept] * n_items + item_N[kept])
    low = low[~sorted_contains(kept_keys, user_N[low] * n_items + item_N[low])]
    if split is not None:
        period = split[low]
    else:
        n_codes = int(user_N.max()) + 1
        ends = [np.full(n_codes, -np.inf) for _ in range(2)]
        for code in range(2):
            rows = kept[label <= code]
            np.maximum.at(ends[code], user_N[rows], ts[rows])
        t, u = ts[low], user_N[low]
        period = np.where(t <= ends[0][u], 0, np.where(t <= ends[1][u], 1, 2))
    return {p: (user_N[low[period == p]], item_N[low[period == p]]) for p in range(2)}


def inject_noise(rng: np.random.Generator, clean_users: np.ndarray, pool: tuple[np.ndarray, np.ndarray],
                 forbidden: np.ndarray, n_items: int,
                 cfg: ProtocolConfig) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((users, items) natural, (users, items) random) for one split with `clean_users` [n] rows."""
    n_noise = int(np.floor(cfg.noise_ratio * clean_users.size + 0.5))
    slot_users = clean_users[rng.choice(clean_users.size, n_noise, replace=False)]
    is_natural = rng.permutation(n_noise) < int(np.floor(cfg.natural_share * n_noise + 0.5))
    n_codes = int(max(clean_users.max(initial=0), pool[0].max(initial=0))) + 1
    want_natural = np.bincount(slot_users[is_natural], minlength=n_codes)
    pu, pi = pool
    order = np.lexsort((rng.random(pu.size), pu))                                 # pool shuffled per user
    pu, pi = pu[order], pi[order]
    _, start, n_u = np.unique(pu, return_index=True, return_counts=True)
    rank = np.arange(pu.size) - np.repeat(start, n_u)
    take = rank < want_natural[pu]
    natural = (pu[take], pi[take])
    want_random = np.bincount(slot_users, minlength=n_codes) - np.bincount(natural[0], minlength=n_codes)
    forbidden = np.union1d(forbidden, natural[0] * n_items + natural[1])
    return natural, random_untouched(rng, np.repeat(np.arange(n_codes), want_random), forbidden, n_items)


def random_untouched(rng: np.random.Generator, slot_users: np.ndarray, forbidden: np.ndarray,
                     n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """One distinct item per slot, uniform among the slot user's items not in `forbidden` (sorted keys)."""
    n_codes = int(max(slot_users.max(initial=0), forbidden.max(initial=0) // n_items)) + 1
    room = n_items - np.bincount(forbidden // n_items, minlength=n_codes)
    over = np.flatnonzero(np.bincount(slot_users, minlength=n_codes) > room)
    if over.size:
        raise DataError(f"user code {over[0]} has touched too many of the {n_items} items to receive its "
                        "random noise interactions; lower --noise-ratio")
    accepted = np.empty(0, np.int64)
    pending = slot_users
    while pending.size:
        keys = pending * n_items + rng.integers(0, n_items, pending.size)
        ok = ~sorted_contains(forbidden, keys) & ~sorted_contains(accepted, keys)
        first = np.zeros(keys.size, bool)
        first[np.unique(keys, return_index=True)[1]] = True
        ok &= first
        accepted = np.union1d(accepted, keys[ok])
        pending = pending[~ok]
    return accepted // n_items, accepted % n_items


def sorted_contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """[n] bool: keys present in the sorted array."""
    if sorted_keys.size == 0:
        return np.zeros(keys.size, bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[pos] == keys


def sorted_pairs(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) sorted by user then item."""
    order = np.lexsort((items, users))
    return users[order].astype(np.int64), items[order].astype(np.int64)
