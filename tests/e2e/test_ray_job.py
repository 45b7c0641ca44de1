"""`ray job submit --working-dir . -- python jobs/train.py …` against a head of this test's own.

The head gets its own temp dir and ports, runs in its own process group (`ray start
--block`), and is stopped by signalling that group only: other Ray instances on the host
(the test session's, a user's) are never touched. `ray stop` would end them all.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _wait_for_http(url: str, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:  # 401 without a token: the server is up
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)
    raise TimeoutError(f"{url} did not come up in {timeout:.0f}s")


@pytest.fixture
def own_head():
    temp_dir = tempfile.mkdtemp(prefix="ldr", dir="/tmp")  # short: Ray's socket paths are length-limited
    gcs, dash, client, agent_l, agent_g, env_agent, metrics, node_mgr, obj_mgr = _free_ports(9)
    worker_lo = 20000 + (os.getpid() % 200) * 100
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus=2",
           f"--temp-dir={temp_dir}", f"--port={gcs}", f"--dashboard-port={dash}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent_l}", f"--dashboard-agent-grpc-port={agent_g}",
           f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
           f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
           f"--min-worker-port={worker_lo}", f"--max-worker-port={worker_lo + 99}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_for_http(f"http://127.0.0.1:{dash}/api/version", timeout=120)
        yield f"http://127.0.0.1:{dash}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        subprocess.run(["rm", "-rf", temp_dir], check=False)


def test_train_job_runs_under_ray_job_submit(own_head, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_API_SERVER_ADDRESS": own_head}
    env.pop("RAY_ADDRESS", None)
    # `python -m` rather than the `ray` script: on a fresh pyenv install its shim may not exist yet.
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--working-dir", str(REPO), "--",
           "python", "jobs/train.py", "--smoke-test", f"data.root={tmp_path / 'data'}",
           f"run.storage={tmp_path / 'runs'}", "run.name=job", "scaling.cpus_per_worker=0.25"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "succeeded" in log.lower(), log[-4000:]
    final = json.loads((tmp_path / "runs" / "job" / "final_metrics.json").read_text())
    assert final["epochs_run"] == 3 and final["replicas_in_sync"] is True
