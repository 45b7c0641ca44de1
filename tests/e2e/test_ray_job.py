"""`ray job submit --working-dir . -- python jobs/train.py …` against a head of this test's own.

The head gets its own temp dir and every port explicitly, each picked free at run time
(GCS, dashboard, dashboard agent HTTP/gRPC, metrics export, runtime-env agent, node and
object manager, Ray client server, and the workers' port range), runs in its own process
group (`ray start --block`), and is stopped by signalling that group only: other Ray
instances on the host (the test session's, a user's) are never touched; `ray stop` would
end them all. A loaded host is expected: the job agent may come up long after the
dashboard, so submission waits for it (bounded) and a "No available agent" answer is
retried a few times, never forever.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
HEAD_READY_S = 180  # dashboard, then the job agent, on a loaded 2-core host
SUBMIT_TRIES = 4
NO_AGENT = "No available agent"


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """n distinct ports the OS hands out as free now (held together, so no repeats)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _free_port_range(size: int, avoid: set[int]) -> int:
    """The first port of `size` consecutive free ports (the workers' range)."""
    for _ in range(200):
        lo = random.randrange(20000, 30000 - size)
        if all(p not in avoid and _port_is_free(p) for p in range(lo, lo + size)):
            return lo
    raise RuntimeError(f"no {size} consecutive free ports in 20000-30000")


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (any status: 401/404 mean it is up)."""
    try:
        urllib.request.urlopen(url, timeout=3)
        return True
    except urllib.error.HTTPError:
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _wait_until(ready, what: str, deadline: float, head: subprocess.Popen) -> None:
    while time.time() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"the test's Ray head exited (code {head.returncode}) before {what} was up")
        if ready():
            return
        time.sleep(1)
    raise TimeoutError(f"{what} did not come up in {HEAD_READY_S}s")


def _stop(head: subprocess.Popen) -> None:
    """Stop this test's head only: its own process group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        try:
            head.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def own_head():
    temp_dir = tempfile.mkdtemp(prefix="ldr", dir="/tmp")  # short: Ray's socket paths are length-limited
    ports = _free_ports(9)
    gcs, dash, client, agent_listen, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = ports
    worker_lo = _free_port_range(100, set(ports))
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus=2",
           f"--temp-dir={temp_dir}", f"--port={gcs}", f"--dashboard-port={dash}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent_listen}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
           f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
           f"--min-worker-port={worker_lo}", f"--max-worker-port={worker_lo + 99}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + HEAD_READY_S
        _wait_until(lambda: _answers(f"http://127.0.0.1:{dash}/api/version"), "the dashboard", deadline, head)
        # The job API needs the head's dashboard agent (it runs the job supervisor).
        _wait_until(lambda: _answers(f"http://127.0.0.1:{agent_listen}/api/job_agent/jobs/none"),
                    "the dashboard agent", deadline, head)
        yield f"http://127.0.0.1:{dash}"
    finally:
        _stop(head)
        subprocess.run(["rm", "-rf", temp_dir], check=False)


def _submit(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`ray job submit`, retried (bounded) while the head answers that no agent is ready yet."""
    for attempt in range(SUBMIT_TRIES):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
        if NO_AGENT not in done.stdout + done.stderr or attempt == SUBMIT_TRIES - 1:
            return done
        time.sleep(5 * (attempt + 1))
    raise AssertionError("unreachable")


def test_train_job_runs_under_ray_job_submit(own_head, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_API_SERVER_ADDRESS": own_head}
    env.pop("RAY_ADDRESS", None)
    home = tmp_path / "home"
    # Relative data.root/run.storage, as users write them: they resolve under LD4MREC_HOME,
    # not in Ray's temporary copy of the working directory.
    runtime_env = json.dumps({"env_vars": {"LD4MREC_HOME": str(home)}})
    # `python -m` rather than the `ray` script: on a fresh pyenv install its shim may not exist yet.
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--working-dir", str(REPO),
           "--runtime-env-json", runtime_env, "--",
           "python", "jobs/train.py", "--smoke-test", "data.root=data", "run.storage=runs", "run.name=job",
           "scaling.num_workers=2", "scaling.cpus_per_worker=0.25"]  # --smoke-test alone runs in-process
    done = _submit(cmd, env)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "succeeded" in log.lower(), log[-4000:]
    assert f"run.storage=runs → {home / 'runs'}" in log, log[-4000:]
    final = json.loads((home / "runs" / "job" / "final_metrics.json").read_text())
    assert final["epochs_run"] == 3 and final["replicas_in_sync"] is True
