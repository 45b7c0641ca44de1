"""Datasets shared by the end-to-end tests (prepared once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipeline.prepare import prepare_dataset, prepare_synthetic
from data_pipeline.readers.mmrec import read_mmrec
from data_pipeline.synthetic import generate_mmrec
from ld4mrec_dist.config import Config, load_config

TINY_MODEL = ["model.hidden=32", "model.svd_rank=8", "train.batch_size=16", "eval.batch_size=64"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_uneven(data_root) -> Path:
    """The tiny synthetic dataset written as deliberately small, uneven train shards (13 rows
    each, the last one short), so that each worker's user range cuts across shard files."""
    raw = generate_mmrec("tiny", data_root / "tiny-raw", seed=7, progress=False)
    return prepare_dataset(read_mmrec(raw), "clean", data_root / "tiny-uneven", seed=7,
                           rows_per_shard=13, progress=False)


@pytest.fixture(scope="session")
def small_clean(data_root) -> Path:
    return prepare_synthetic("small", "clean", data_root, progress=False)


def make_config(data_path: Path, storage: Path, name: str, *overrides: str) -> Config:
    return load_config(overrides=[f"data.path={data_path}", f"run.storage={storage}", f"run.name={name}",
                                  *overrides])
