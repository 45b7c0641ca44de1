"""Shared fixtures: one local Ray instance for the whole test session (docs/design.md §8: ~5 s to start);
under `scripts/check`'s two pytest-xdist workers, one per worker."""

from __future__ import annotations

import os
import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# S3 in tests is a local moto server (fixture `s3_bucket`); set before Ray starts so its
# workers inherit it, and so that no test can ever reach a real bucket.
MOTO_PORT = _free_port()
os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{MOTO_PORT}", AWS_ACCESS_KEY_ID="testing",
                  AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                  AWS_EC2_METADATA_DISABLED="true")
os.environ.pop("AWS_PROFILE", None)

# Cut Ray Train's per-fit() overhead (docs/design.md §8: 20-30 s -> ~20 s).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray instance (never attaches to a running cluster)."""
    import ray

    if not ray.is_initialized():
        # No dashboard here, so Ray Train's placement-group cleaner has no State API of ours
        # to ask; left to find one, it asks whichever Ray instance on the host it finds, and
        # told "no such actor" by another user's cluster it removes a live run's workers.
        # Point it at nothing: it cannot act (tune's SweepGuard removes leaked groups).
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False,
                 runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_bucket():
    """An empty bucket on a local moto S3 server: `s3://<name>/…` URIs work in tests."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=MOTO_PORT, verbose=False)
    server.start()
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="ld4mrec-test")
    yield "ld4mrec-test"
    server.stop()
