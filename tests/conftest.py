"""Shared fixtures: one local Ray instance for the whole test session (RAY_NOTES: ~5 s to start)."""

from __future__ import annotations

import os

import pytest

# Cut Ray Train's per-fit() overhead (RAY_NOTES: 20-30 s -> ~20 s).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray instance (never attaches to a running cluster)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield ray
    ray.shutdown()
