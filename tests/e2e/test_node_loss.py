"""A whole node lost under a run, on a multi-node cluster of this test's own.

The cluster: a head with no CPUs and two 1-CPU worker nodes, each a `ray start --block`
process in its own session with its own temp dir and every port picked free at run time;
runs join it through RAY_ADDRESS, set only in their own environment (the test session's
local Ray, in this process or the other xdist worker, is never touched). A node is lost
the way a reclaimed machine is: every process of its session (raylet, agents, workers)
gets SIGKILL. The runs are `python jobs/train.py` processes, as a user starts them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from .conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
NODE_READY_S = 180  # a loaded 2-core host
RUN_TIMEOUT_S = 540
TIMING_KEYS = {"train_time_s", "eval_time_s", "users_per_s", "data_time_s", "sync_time_s"}
# 10 tiny epochs: the node is killed when the first checkpoint appears, with 9 epochs to go.
RUN = [*TINY_MODEL, "train.epochs=10", "train.patience=100", "scaling.num_workers=2", "scaling.cpus_per_worker=1"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


@dataclass
class RayNode:
    proc: subprocess.Popen
    temp_dir: str
    node_manager_port: int

    def ready(self) -> bool:
        return "Ray runtime started" in (Path(self.temp_dir) / "start.out").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL every process of the node's session: its raylet, agents and workers."""
        for pid in _session_pids(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        self.proc.wait(timeout=30)


class LocalCluster:
    def __init__(self) -> None:
        self.env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token"}
        self.nodes: list[RayNode] = []
        self.head = self.start_node(num_cpus=0)
        self.address = f"127.0.0.1:{self.head_port}"

    def start_node(self, num_cpus: int = 1) -> RayNode:
        temp_dir = tempfile.mkdtemp(prefix="ldnl", dir="/tmp")  # short: Ray's socket paths are length-limited
        ports = _free_ports(16)
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats",
               f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}", f"--node-manager-port={ports[0]}",
               f"--object-manager-port={ports[1]}", f"--dashboard-agent-listen-port={ports[2]}",
               f"--dashboard-agent-grpc-port={ports[3]}", f"--metrics-export-port={ports[4]}",
               f"--runtime-env-agent-port={ports[5]}", "--worker-port-list=" + ",".join(map(str, ports[8:]))]
        if not self.nodes:
            self.head_port = ports[6]
            cmd += ["--head", f"--port={ports[6]}", f"--ray-client-server-port={ports[7]}", "--include-dashboard=false"]
        else:
            cmd += [f"--address={self.address}"]
        with open(Path(temp_dir) / "start.out", "w") as out:
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node = RayNode(proc, temp_dir, ports[0])
        self.nodes.append(node)
        return node

    def wait_ready(self, *nodes: RayNode) -> None:
        deadline = time.monotonic() + NODE_READY_S
        while not all(n.ready() for n in nodes):
            assert all(n.proc.poll() is None for n in nodes), "a Ray node of the test exited while starting"
            assert time.monotonic() < deadline, f"the test's Ray nodes did not start in {NODE_READY_S}s"
            time.sleep(0.3)

    def node_of(self, pid: int) -> RayNode:
        sid = os.getsid(pid)
        return next(n for n in self.nodes if n.proc.pid == sid)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.proc.poll() is None:
                node.kill()
            subprocess.run(["rm", "-rf", node.temp_dir], check=False)


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.wait_ready(c.head, c.start_node(), c.start_node())  # the workers retry until the head is up
        yield c
    finally:
        c.stop()


def _train(cluster: LocalCluster, *args: str, **kw) -> subprocess.Popen:
    env = {**cluster.env, "RAY_ADDRESS": cluster.address,
           # Ray Train's own wait per start attempt, made long: the run must end without it.
           "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600"}
    env.pop("RAY_COLOR_PREFIX", None)
    return subprocess.Popen([sys.executable, str(REPO / "jobs" / "train.py"), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "best_model.pt", map_location="cpu", weights_only=True)["model"]


def test_node_loss_names_the_node_and_resume_replays_the_uninterrupted_run(cluster, tiny_uneven, tmp_path):
    common = [*RUN, f"data.path={tiny_uneven}", f"run.storage={tmp_path}"]
    reference = _train(cluster, *common, "run.name=ref")  # the uninterrupted run
    ref_out, _ = reference.communicate(timeout=RUN_TIMEOUT_S)
    assert reference.returncode == 0, ref_out[-4000:]

    run_dir = tmp_path / "lost"
    run = _train(cluster, *common, "run.name=lost", "scaling.max_failures=1", "scaling.lost_node_wait_s=2")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (list(run_dir.glob("checkpoint_*")) and (run_dir / "workers.json").is_file()):
        assert run.poll() is None, run.communicate()[0][-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rank0_pid = json.loads((run_dir / "workers.json").read_text())["0"]["pid"]
    lost = cluster.node_of(rank0_pid)
    lost.kill()
    killed_at = time.monotonic()
    out, _ = run.communicate(timeout=RUN_TIMEOUT_S)
    took = time.monotonic() - killed_at
    assert run.returncode == 2, out[-4000:]
    assert took < 300, f"the run took {took:.0f}s to end after the node was lost"  # Ray's own wait: ≥ 600 s
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(
        rf"error: training failed: node \w+ \([\d.]+:{lost.node_manager_port}\) was lost, and worker rank 0 with it"
        r"(; rank 1 failed as a consequence \(.*\))?; the live nodes cannot hold the workers \(CPU 2 for 2 workers × 1,"
        r" the cluster has 1\) and none came back within 2s \(scaling\.lost_node_wait_s\); kept: "
        r"(checkpoint_\S+) \(epoch (\d+)\); continue once the cluster has the nodes again with: "
        rf"python jobs/train\.py --resume {re.escape(str(run_dir))}", last)
    assert match, last
    kept_epoch = int(match.group(3))
    assert kept_epoch >= 1 and (run_dir / match.group(2)).is_dir()
    for noise in ("Raylet", "Traceback", "(TrainController", "(RayTrainWorker", "gcs_server"):
        assert noise not in out, noise  # Ray's output went to the run's log file
    assert "Traceback" in (run_dir / "run.log").read_text()
    shown = [int(e) for e in re.findall(r"^\[ld4mrec\] epoch\s+(\d+) ", out, re.MULTILINE)]
    assert shown == [row["epoch"] for row in _rows(run_dir)]  # rank 0's last epoch line too

    cluster.wait_ready(cluster.start_node())  # a replacement for the lost node
    resumed = _train(cluster, "--resume", str(run_dir))
    res_out, _ = resumed.communicate(timeout=RUN_TIMEOUT_S)
    assert resumed.returncode == 0, res_out[-4000:]
    assert f"resuming from {match.group(2)} (epoch {kept_epoch})" in res_out
    assert _without_timings(_rows(run_dir)) == _without_timings(_rows(tmp_path / "ref"))
    ref_weights, weights = _weights(tmp_path / "ref"), _weights(run_dir)
    assert ref_weights.keys() == weights.keys()
    assert all(torch.equal(ref_weights[k], weights[k]) for k in weights)
    kept = sorted(p.name for p in run_dir.glob("checkpoint_*"))
    assert 1 <= len(kept) <= 2, kept  # best + latest
