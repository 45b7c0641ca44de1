"""What the reliability tests share: the tiny dataset, tiny model settings, the job entry points."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from data_pipeline.prepare import prepare_synthetic
from ld4mrec_dist.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_settings() -> list[str]:
    """Overrides that make a run tiny (data and run paths are each test's own)."""
    return ["train.batch_size=32", "model.hidden=32", "model.svd_rank=8", "eval.batch_size=64"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny synthetic dataset, prepared once for every reliability test."""
    return prepare_synthetic("tiny", "clean", tmp_path_factory.mktemp("reliability-data"), progress=False)


@pytest.fixture(scope="session")
def job() -> Callable[[str], ModuleType]:
    """`job("train")`: the module of jobs/train.py, loaded as a user's `python jobs/train.py` runs it."""
    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"job_{name}_reliability", REPO / "jobs" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_config(tiny_settings) -> Callable[..., Config]:
    """`tiny_config(data, runs, name, *overrides)`: a tiny run's Config."""
    def make(data: Path, runs: Path, name: str, *overrides: str) -> Config:
        return load_config(overrides=[f"data.path={data}", f"run.storage={runs}", f"run.name={name}",
                                      *tiny_settings, *overrides])

    return make
