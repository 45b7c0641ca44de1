"""The one data path: rank user ranges, and what each rank reads, against the whole dataset."""

import numpy as np
import pytest
import torch

from data_pipeline.dataset import open_dataset
from data_pipeline.prepare import prepare_dataset
from data_pipeline.readers.mmrec import read_mmrec
from data_pipeline.synthetic import generate_mmrec
from ld4mrec_dist.eval.evaluator import dataset_eval_data, eval_data, metric_sums, ranking_by_scores
from ld4mrec_dist.partition import read_rank_rows, user_range


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """The tiny dataset in 13-row shards: rank ranges cut across shard files."""
    root = tmp_path_factory.mktemp("partition")
    raw = generate_mmrec("tiny", root / "raw", seed=3, progress=False)
    return open_dataset(prepare_dataset(read_mmrec(raw), "clean", root / "ds", seed=3, rows_per_shard=13,
                                        progress=False))


@pytest.mark.parametrize("n_users, world", [(10, 1), (10, 3), (7, 7), (100, 4), (5, 8)])
def test_user_ranges_cover_every_user_once_in_balanced_blocks(n_users, world):
    ranges = [user_range(n_users, r, world) for r in range(world)]
    assert [u for r in ranges for u in r] == list(range(n_users))
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


def test_user_range_refuses_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 of world size 2"):
        user_range(10, 2, 2)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_rows_stack_to_the_whole_splits(small_shards, world):
    ds = small_shards
    parts = [read_rank_rows(ds, r, world) for r in range(world)]
    for split in ("train", "valid", "test"):
        stacked = np.vstack([getattr(p, split).toarray() for p in parts])
        np.testing.assert_array_equal(stacked, ds.split_csr(split).toarray())
    users = np.concatenate([p.train_store().users for p in parts])
    assert users.tolist() == sorted(users.tolist()) and len(users) == len(set(users.tolist()))
    for split in ("valid", "test"):
        np.testing.assert_array_equal(np.concatenate([p.eval_users(split) for p in parts]), ds.eval_users(split))


def test_rank_metric_sums_add_up_to_the_single_process_sums(small_shards):
    ds = small_shards
    w = torch.randn(ds.n_items, ds.n_items, generator=torch.Generator().manual_seed(0))

    def score(rows, users):
        return rows.to_dense() @ w

    rank = ranking_by_scores(score)

    whole = dataset_eval_data(ds, mask_valid_at_test=True)["test"]
    single = metric_sums(rank, whole, [5, 10], 7, torch.device("cpu"))
    ranks = [eval_data(read_rank_rows(ds, r, 3), True)["test"] for r in range(3)]
    summed = sum(metric_sums(rank, part, [5, 10], 7, torch.device("cpu")) for part in ranks)
    torch.testing.assert_close(summed, single)
    # The same split of a whole-dataset EvalData (tests and tools build it that way).
    sliced = sum(metric_sums(rank, whole.of_users(user_range(ds.n_users, r, 3)), [5, 10], 7, torch.device("cpu"))
                 for r in range(3))
    torch.testing.assert_close(sliced, single)


def test_split_rows_of_an_empty_range_is_empty(small_shards):
    assert small_shards.split_rows("train", range(5, 5)).shape == (0, small_shards.n_items)
