"""Synthetic MMRec datasets with planted structure, so what a model learns can be checked.

Generative story (all vectorised; memory follows interactions + one feature chunk):
- Items and users belong to one of K clusters and one of S sub-clusters inside it
  (group g = cluster·S + sub); cluster sizes are skewed (Dirichlet weights).
- Item popularity is log-normal (skew), so many items have few clicks.
- Each interaction of user u targets u's own group (p_sub), another group of u's cluster
  (p_cluster), or any item (the rest); inside the target the item is drawn ∝ popularity.
- Ratings: low (< 4) with probability depending on affinity (own group 0.08, own cluster
  0.2, elsewhere 0.55: ≈ 20 % overall), so natural noise is really noise.
- Timestamps: each user is active over a random window of the 2010–2018 span.
- Item features, per modality: a noisy linear projection of the item's latent factors
  (cluster centre + sub-cluster offset + small item noise). The noise does not depend on
  popularity, so items with few clicks still carry clean features: the features tell
  which group an item belongs to beyond what a low-rank SVD of the sparse clicks gives.
Every user gets ≥ 5 interactions and every item ≥ 1 (so MMRec's item count = rows).

Output (MMRec format without x_label, so the protocol filters ratings and splits):
`<shape>.inter`, `text_feat.npy`, `image_feat.npy`, plus `truth.npz` (planted groups)
and `generator.json`. Shapes: U users, I items, L latent dims, D feature width.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm.auto import tqdm

from data_pipeline.errors import DataError

GENERATOR_VERSION = 1
P_SUB, P_CLUSTER = 0.55, 0.25
P_LOW = (0.08, 0.2, 0.55)          # own group, own cluster, elsewhere
MIN_PER_USER = 5
T0, SPAN = 1262304000, 9 * 365 * 86400   # 2010-01-01, nine years
FEATURE_CHUNK = 4096


@dataclass(frozen=True)
class Shape:
    users: int
    items: int
    kept: int
    """Target interactions kept by the clean protocol (rating ≥ 4)."""
    text: int
    image: int
    clusters: int
    subclusters: int
    latent: int = 32


SHAPES = {
    "tiny": Shape(100, 60, 1_000, 8, 16, 4, 2, 8),
    "small": Shape(2_000, 1_000, 32_000, 64, 128, 10, 4, 16),
    "baby": Shape(19_445, 7_050, 160_792, 384, 4096, 20, 5),
    "sports": Shape(35_598, 18_357, 296_337, 384, 4096, 30, 5),
    "electronics": Shape(192_403, 63_001, 1_689_188, 384, 4096, 50, 6),
}


def generate_mmrec(shape: str, out: str | Path, seed: int = 2024, progress: bool = True) -> Path:
    """Write the MMRec files of `shape` into `out` (atomically), unless already there; returns `out`."""
    if shape not in SHAPES:
        raise DataError(f"synthetic shape {shape!r}: choose one of {tuple(SHAPES)}")
    out = Path(out).resolve()
    meta = {"version": GENERATOR_VERSION, "shape": shape, "seed": seed, **asdict(SHAPES[shape])}
    stamp = out / "generator.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == meta:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_source(tmp, shape, SHAPES[shape], seed, progress)
        (tmp / "generator.json").write_text(json.dumps(meta, indent=2) + "\n")
        if stamp.is_file() and json.loads(stamp.read_text()) == meta:
            return out                     # another process generated it meanwhile
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_source(folder: Path, name: str, shape: Shape, seed: int, progress: bool) -> None:
    """The .inter file, the feature files and truth.npz."""
    seeds = np.random.SeedSequence(seed).spawn(4)
    world = plant_world(np.random.default_rng(seeds[0]), shape)
    users, items, rating, ts = interactions(np.random.default_rng(seeds[1]), shape, world)
    write_inter(folder / f"{name}.inter", users, items, rating, ts)
    for k, (modality, width, noise) in enumerate((("text", shape.text, 0.5), ("image", shape.image, 1.0))):
        write_feature(np.random.default_rng(seeds[2 + k]), folder / f"{modality}_feat.npy", world["latent"],
                      width, noise, progress, modality)
    truth: dict[str, Any] = {k: v for k, v in world.items() if k != "latent"}
    np.savez(folder / "truth.npz", **truth)


def plant_world(rng: np.random.Generator, shape: Shape) -> dict[str, np.ndarray]:
    """Clusters, groups, popularity and item latent factors [I, L]."""
    K, S, L = shape.clusters, shape.subclusters, shape.latent
    weights = rng.dirichlet(np.full(K, 2.0))
    item_group = np.concatenate([np.arange(min(K * S, shape.items)),   # every group gets an item
                                 rng.choice(K, shape.items - min(K * S, shape.items), p=weights) * S
                                 + rng.integers(0, S, max(0, shape.items - K * S))])
    item_group = rng.permutation(item_group)
    user_group = rng.choice(K, shape.users, p=weights) * S + rng.integers(0, S, shape.users)
    centres = rng.normal(0, 1, (K, L))
    offsets = rng.normal(0, 0.6, (K * S, L))
    latent = centres[item_group // S] + offsets[item_group] + rng.normal(0, 0.3, (shape.items, L))
    return {"item_group": item_group, "item_cluster": item_group // S, "user_group": user_group,
            "user_cluster": user_group // S, "popularity": np.exp(rng.normal(0, 1.2, shape.items)),
            "latent": latent.astype(np.float32), "subclusters": np.array(S)}


def interactions(rng: np.random.Generator, shape: Shape,
                 world: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, ratings, timestamps) [N] sorted by (user, time), no duplicate pairs."""
    S = int(world["subclusters"])
    raw_mean = shape.kept / (1 - 0.23) / shape.users - shape.items / shape.users
    n_u = MIN_PER_USER + rng.geometric(1 / max(1.0, raw_mean - MIN_PER_USER + 1), shape.users) - 1
    n_u = np.minimum(n_u, shape.items // 2)
    draws = np.repeat(np.arange(shape.users), np.ceil(n_u * 3.0).astype(np.int64) + 10)
    items = sample_items(rng, world, world["user_group"][draws], S)
    users, items = trim_per_user(rng, draws, items, n_u, shape.items)
    users, items = cover_items(rng, world, users, items, shape)
    rel = np.where(world["item_group"][items] == world["user_group"][users], 0,
                   np.where(world["item_cluster"][items] == world["user_cluster"][users], 1, 2))
    low = rng.random(users.size) < np.asarray(P_LOW)[rel]
    rating = np.where(low, rng.choice([1, 2, 3], users.size, p=[0.3, 0.3, 0.4]),
                      rng.choice([4, 5], users.size, p=[0.4, 0.6]))
    start = rng.integers(0, int(SPAN * 0.7), shape.users)
    length = np.minimum(rng.exponential(SPAN * 0.15, shape.users), SPAN - start).astype(np.int64) + 1
    ts = T0 + start[users] + (rng.random(users.size) * length[users]).astype(np.int64)
    order = np.lexsort((items, ts, users))
    return users[order], items[order], rating[order], ts[order]


def sample_items(rng: np.random.Generator, world: dict[str, Any], group: np.ndarray, S: int) -> np.ndarray:
    """One item per draw: own group, a group of the own cluster, or any item; ∝ popularity inside."""
    item_group, pop = world["item_group"], world["popularity"]
    by_group = np.argsort(item_group, kind="stable")
    cum = np.cumsum(pop[by_group])
    n_groups = int(item_group.max()) + 1
    hi = cum[np.searchsorted(item_group[by_group], np.arange(n_groups), side="right") - 1]
    lo = np.concatenate([[0.0], hi[:-1]])
    kind = rng.random(group.size)
    target = np.where(kind < P_SUB, group, (group // S) * S + rng.integers(0, S, group.size))
    low_cum = np.where(kind < P_SUB + P_CLUSTER, lo[target], 0.0)
    span = np.where(kind < P_SUB + P_CLUSTER, hi[target] - lo[target], cum[-1])
    pos = np.searchsorted(cum, low_cum + rng.random(group.size) * span, side="right")
    return by_group[np.minimum(pos, cum.size - 1)]


def trim_per_user(rng: np.random.Generator, users: np.ndarray, items: np.ndarray, n_u: np.ndarray,
                  n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs, at most n_u per user, chosen at random."""
    keys = np.unique(users * n_items + items)
    u = keys // n_items
    shuffled = np.lexsort((rng.random(keys.size), u))
    u, keys = u[shuffled], keys[shuffled]
    _, start, count = np.unique(u, return_index=True, return_counts=True)
    keep = np.arange(u.size) - np.repeat(start, count) < n_u[u]
    return u[keep], keys[keep] % n_items


def cover_items(rng: np.random.Generator, world: dict[str, Any], users: np.ndarray, items: np.ndarray,
                shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """Add one interaction (a user of the item's group) for each item nobody drew."""
    missing = np.setdiff1d(np.arange(shape.items), items)
    if missing.size == 0:
        return users, items
    by_group = np.argsort(world["user_group"], kind="stable")
    groups = world["user_group"][by_group]
    g = world["item_group"][missing]
    lo, hi = np.searchsorted(groups, g), np.searchsorted(groups, g, side="right")
    pick = np.where(hi > lo, lo + (rng.random(missing.size) * (hi - lo)).astype(np.int64),
                    rng.integers(0, shape.users, missing.size))
    return np.concatenate([users, by_group[np.minimum(pick, by_group.size - 1)]]), np.concatenate([items, missing])


def write_inter(path: Path, users: np.ndarray, items: np.ndarray, rating: np.ndarray, ts: np.ndarray) -> None:
    """MMRec .inter TSV: userID itemID rating timestamp (no x_label)."""
    table = pa.table({"userID": users.astype(np.int64), "itemID": items.astype(np.int64),
                      "rating": rating.astype(np.int64), "timestamp": ts.astype(np.int64)})
    with open(path, "wb") as fh:
        fh.write(("\t".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, fh, pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False))


def write_feature(rng: np.random.Generator, path: Path, latent: np.ndarray, width: int, noise: float, progress: bool,
                  name: str) -> None:
    """[I, width] float32 = latent · W + noise, written chunk by chunk."""
    proj = rng.normal(0, 1 / np.sqrt(latent.shape[1]), (latent.shape[1], width)).astype(np.float32)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False,
                                                "shape": (latent.shape[0], width)})
    with open(path, "wb") as fh, tqdm(total=latent.shape[0], desc=f"synthetic {name}", unit="item",
                                      disable=None if progress else True, leave=False) as bar:
        fh.write(head.getvalue())
        for start in range(0, latent.shape[0], FEATURE_CHUNK):
            block = latent[start:start + FEATURE_CHUNK] @ proj
            block += noise * rng.standard_normal(block.shape, dtype=np.float32)
            fh.write(block.astype("<f4").tobytes())
            bar.update(block.shape[0])
