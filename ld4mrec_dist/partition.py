"""The one data path: which users a rank owns, and the rows it reads for them, once.

Shapes: U users, I items, W ranks, R = |users of a rank| (≈ U / W).

Rank r of W owns the contiguous user range [r·U/W, (r+1)·U/W): a pure function of the
dataset and W, so a resumed W-worker run sees exactly the rows the uninterrupted one saw.
The rank reads its users' train, valid and test rows from the user-sorted Parquet shards
(predicate pushdown skips the others) and uses them for everything: train rows are the
training input, the evaluation input and the mask; valid/test rows are the targets.
Per-rank memory is O(Z / W) for Z non-zeros; no rank holds another rank's users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from data_pipeline.dataset import PreparedDataset
from ld4mrec_dist.config import Config, ConfigError
from ld4mrec_dist.rows import RowStore, rows_with_items, users_with_rows


def user_range(n_users: int, rank: int, world: int) -> range:
    """The users of `rank` of `world`: a contiguous block, sizes differing by at most one."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} of world size {world}")
    return range(rank * n_users // world, (rank + 1) * n_users // world)


def ranks_without_train_rows(train_users: np.ndarray, n_users: int, world: int) -> list[int]:
    """The ranks of `world` whose user range holds none of `train_users` (sorted ids of the
    users with ≥ 1 train item): such a rank would have nothing to train on."""
    bounds = [(r.start, r.stop) for r in (user_range(n_users, rank, world) for rank in range(world))]
    lo = np.searchsorted(train_users, [b[0] for b in bounds])
    hi = np.searchsorted(train_users, [b[1] for b in bounds])
    return [rank for rank in range(world) if hi[rank] == lo[rank]]


def check_ranks_have_rows(ds: PreparedDataset, cfg: Config, world: int, strategy: str) -> None:
    """ConfigError, before any worker starts, when a data-parallel rank of the run (`world`
    ranks running `strategy`) would get no train rows: more ranks than users, or a block of
    users without train items."""
    data_world = world // (cfg.scaling.item_group or world) if strategy == "item_parallel" else world
    train_users = ds.users_in("train")
    empty = ranks_without_train_rows(train_users, ds.n_users, data_world)
    if empty:
        users = user_range(ds.n_users, empty[0], data_world)
        owns = f"users {users.start}..{users.stop - 1}" if len(users) else "no user at all"
        raise ConfigError(f"scaling.num_workers={cfg.scaling.num_workers}: {data_world} data-parallel rank(s), but "
                          f"rank {empty[0]} ({owns}) would get no train rows: "
                          f"{train_users.size} of the {ds.n_users} users of {ds.name} have any; use fewer workers")


@dataclass
class RankRows:
    """A rank's users and their rows; row r of each matrix is user `users.start + r`."""

    users: range
    train: sp.csr_matrix  # [R, I]
    valid: sp.csr_matrix  # [R, I]
    test: sp.csr_matrix  # [R, I]

    def users_with_items(self, split: str) -> np.ndarray:
        """int64, global ids: this rank's users with ≥ 1 item in `split`."""
        return users_with_rows(getattr(self, split)) + self.users.start

    def train_store(self) -> RowStore:
        """The train rows of this rank's users with ≥ 1 train item, by global user id."""
        store = rows_with_items(self.train)
        return RowStore(store.users + self.users.start, store.csr)

    def eval_users(self, split: str) -> np.ndarray:
        """int64, global ids: users with ≥ 1 item in `split` and ≥ 1 train item."""
        return np.intersect1d(self.users_with_items(split), self.users_with_items("train"))


def read_rank_rows(ds: PreparedDataset, rank: int, world: int) -> RankRows:
    """The rows of `rank`'s users in the three splits (the whole dataset for world = 1)."""
    users = user_range(ds.n_users, rank, world)
    return RankRows(users, *(ds.split_rows(split, users) for split in ("train", "valid", "test")))
