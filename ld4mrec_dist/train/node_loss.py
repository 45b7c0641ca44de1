"""A node lost under a run: which rank it took, which errors are only its consequences,
and whether a restart can start at all.

Ray learns of a lost node late. The workers on it report nothing (only the survivors'
collective errors arrive: gloo's "Connection closed by peer"), and the cluster keeps
listing the node as alive until its heartbeats have been missed for a while (~15 s with
Ray's defaults). So the run records where each rank ran (`workers.json` in the run
directory, written when a worker group starts) and asks a node's raylet itself: a node
whose raylet port refuses the connection (or does not answer) is gone.

Everything here but the probes (`raylet_answers`, `cluster_nodes`) and `RestartGate`'s
hooks is plain data in, plain data out, so the rules are tested without a cluster.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from data_pipeline import storage
from ld4mrec_dist.config import Config
from ld4mrec_dist.run_dir import WORKERS_FILE, RunDir, file_in
from ld4mrec_dist.train.resources import cluster_shortfall

# What a rank sees when a peer's process or node vanishes under a collective: these errors
# are consequences, never the cause.
PEER_LOSS = re.compile(r"connection (reset|closed|refused) by peer|broken pipe|remote (worker|process)|"
                       r"ECONNRESET|peer .*(closed|reset|exited)", re.IGNORECASE)
ERROR_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b")
SOURCE_LOCATION = re.compile(r"\[[^\]\s]+\.(cc|cpp|h|hpp):\d+\] ")
RAYLET_PROBE_S = 1.0  # a raylet on a live node accepts a connection in well under a second
POLL_S = 0.5


@dataclass(frozen=True)
class Node:
    """A cluster node as the run names it: Ray's node id and its raylet's address."""

    node_id: str
    address: str  # host:port of the raylet (node manager)
    alive: bool  # listed alive by the cluster *and* its raylet answers
    resources: dict[str, float] = field(default_factory=dict, compare=False)

    def name(self) -> str:
        return f"node {self.node_id[:12]} ({self.address})"


@dataclass(frozen=True)
class Blame:
    """Why a worker group failed: the rank(s) that caused it and what the others saw."""

    cause_ranks: list[int]
    cause: str  # e.g. "node 1a2b… (10.0.0.5:6380) was lost, and worker rank 0 with it"
    consequences: list[tuple[int, str]]  # (rank, its error in one line)
    lost_nodes: list[Node]

    def line(self) -> str:
        if not self.consequences:
            return self.cause
        ranks = ", ".join(str(r) for r, _ in self.consequences)
        what = self.consequences[0][1]
        return f"{self.cause}; rank {ranks} failed as a consequence ({what})"


def first_line(err: BaseException) -> str:
    """An exception in one line: its last `Type: message` line (a worker's error carries its
    traceback), else its first line, cut to 300 characters."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    error_lines = [line for line in lines if ERROR_LINE.match(line)]
    text = error_lines[-1] if error_lines else lines[0] if lines else type(err).__name__
    return short(text, 300)


def process_died(err: BaseException) -> bool:
    """Whether a worker's error means its process is gone (killed, crashed, OOM), not an exception."""
    cause = getattr(err, "health_check_failure", err)
    return "ActorDied" in type(cause).__name__ or "actor died" in str(cause).lower()


def error_line(err: BaseException) -> str:
    """`Type: message` of a rank's error in one line, without the C++ source location that
    gloo puts first (`[…/pair.cc:537] Read error …`)."""
    line = SOURCE_LOCATION.sub("", first_line(err))
    return line if ERROR_LINE.match(line) else f"{type(err).__name__}: {line}"


def failures_of(errors: dict[int, BaseException]) -> tuple[dict[int, str], set[int]]:
    """(rank -> error in one line, ranks whose process died) of Ray's per-rank errors."""
    return {r: error_line(e) for r, e in errors.items()}, {r for r, e in errors.items() if process_died(e)}


def is_peer_loss(error_line: str) -> bool:
    return bool(PEER_LOSS.search(error_line))


def short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def blame(failures: dict[int, str], died: set[int], placements: dict[int, str], nodes: dict[str, Node]) -> Blame:
    """The cause of a worker group's failure.

    `failures`: rank -> its error in one line, as Ray reported them (a rank on a lost node
    is often missing); `died`: ranks Ray reported as dead processes; `placements`: rank ->
    node id of the attempt that failed; `nodes`: node id -> Node, `alive` probed.
    Order of blame: ranks on a lost node, then ranks whose process died, then a rank that
    raised something other than a peer's loss, then ranks that went silent while their
    peers saw connections close.
    """
    lost = sorted({placements[r] for r in placements if placements[r] in nodes and not nodes[placements[r]].alive})
    lost_nodes = [nodes[n] for n in lost]
    on_lost = sorted(r for r in placements if placements[r] in lost)
    if on_lost:
        cause = "; ".join(f"{nodes[n].name()} was lost, and worker rank "
                          f"{', '.join(str(r) for r in on_lost if placements[r] == n)} with it" for n in lost)
        return Blame(on_lost, cause, _others(failures, on_lost), lost_nodes)
    if died:
        ranks = sorted(died)
        return Blame(ranks, f"worker rank {', '.join(map(str, ranks))} died", _others(failures, ranks), [])
    raised = sorted(r for r, line in failures.items() if not is_peer_loss(line))
    if raised:
        rank = raised[0]
        return Blame([rank], f"worker rank {rank} raised {failures[rank]}", _others(failures, [rank]), [])
    silent = sorted(r for r in placements if r not in failures)
    if failures and silent:
        return Blame(silent, f"worker rank {', '.join(map(str, silent))} stopped (its process or node went away)",
                     _others(failures, silent), [])
    if failures:
        rank = min(failures)
        return Blame([rank], f"worker rank {rank} raised {failures[rank]}", _others(failures, [rank]), [])
    return Blame([], "the worker group failed", [], [])


def _others(failures: dict[int, str], causes: list[int]) -> list[tuple[int, str]]:
    return [(r, short(failures[r])) for r in sorted(failures) if r not in causes]


# ---------------------------------------------------------------- capacity after a loss


def live_resources(nodes: list[Node]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(the live nodes' summed CPUs/GPUs, each live node's): what a restart can use."""
    live = [node.resources for node in nodes if node.alive]
    return {k: sum(res.get(k, 0.0) for res in live) for k in ("CPU", "GPU")}, live


def raylet_answers(address: str, timeout_s: float = RAYLET_PROBE_S) -> bool:
    """Whether the raylet at host:port accepts a TCP connection."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def cluster_nodes(probe: set[str] | None = None) -> dict[str, Node]:
    """Every node Ray lists (dead ones included), by node id; a listed-alive node in
    `probe` counts as alive only if its raylet answers (Ray may not have noticed yet)."""
    import ray

    out = {}
    for raw in ray.nodes():  # type: ignore[no-untyped-call]
        node_id = str(raw.get("NodeID", ""))
        address = f"{raw.get('NodeManagerAddress', '?')}:{raw.get('NodeManagerPort', '?')}"
        alive = bool(raw.get("Alive")) and (probe is None or node_id not in probe or raylet_answers(address))
        resources = {k: float(v) for k, v in (raw.get("Resources") or {}).items() if k in ("CPU", "GPU")}
        out[node_id] = Node(node_id, address, alive, resources)
    return out


# ---------------------------------------------------------------- where each rank ran


def write_placements(run_dir: RunDir, placements: dict[int, dict[str, Any]]) -> None:
    """workers.json: rank -> node id, node IP, pid of the latest worker group."""
    storage.write_text(file_in(run_dir, WORKERS_FILE),
                       json.dumps({str(r): p for r, p in sorted(placements.items())}, indent=1))


def read_placements(run_dir: RunDir) -> dict[int, str]:
    """rank -> node id of the latest worker group ({} when none was recorded)."""
    path = file_in(run_dir, WORKERS_FILE)
    try:
        raw = json.loads(storage.read_text(path)) if storage.is_file(path) else {}
        return {int(r): str(p["node_id"]) for r, p in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


class NodeLostError(RuntimeError):
    """A restart found fewer CPUs/GPUs than the run asks for, after a node was lost, and
    none came back in time (raised in Ray Train's controller, read by the driver): what is
    missing, and the failed attempt's per-rank errors (one line each) and dead ranks."""

    def __init__(self, missing: str, failures: dict[int, str] | None = None, died: set[int] | None = None) -> None:
        super().__init__(missing)
        self.missing, self.failures, self.died = missing, dict(failures or {}), set(died or ())

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.missing, self.failures, self.died))


class RestartGate:
    """A Ray Train controller/worker-group callback (Ray Train V2 runs any callback given
    in RunConfig.callbacks): records where each rank runs, and before a *re*start checks
    that the live nodes can hold the workers. On a cluster that does not grow
    (`scaling.wait_for_resources_s` = 0) it waits up to `scaling.lost_node_wait_s` for the
    lost capacity to return, then fails the run at once, instead of Ray Train's start-up
    timeout for each of the remaining attempts."""

    def __init__(self, cfg: Config, run_dir: RunDir) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.placements: dict[int, str] = {}
        self.deadline: float | None = None
        self.failures: dict[int, str] = {}
        self.died: set[int] = set()

    # Ray Train's hooks (duck-typed: the classes it checks are mixed in by `ray_callback`)

    def after_worker_group_start(self, worker_group: Any) -> None:
        records = {}
        for index, worker in enumerate(worker_group.get_workers()):
            context = getattr(worker, "distributed_context", None)
            rank = getattr(context, "world_rank", index)
            meta = worker.metadata
            records[rank] = {"node_id": meta.node_id, "node_ip": meta.node_ip, "pid": meta.pid}
        self.placements = {r: str(p["node_id"]) for r, p in records.items()}
        self.deadline = None
        write_placements(self.run_dir, records)

    def after_worker_group_poll_status(self, worker_group_status: Any) -> None:
        errors = worker_group_status.errors
        if errors:
            self.failures, self.died = failures_of(errors)

    def before_controller_execute_resize_decision(self, decision: Any) -> None:
        if not self.placements or self.cfg.scaling.wait_for_resources_s > 0:
            return  # the first start (checked by the driver), or a cluster that may add nodes
        problems = self.wait_for_capacity()
        if problems:  # Ray Train hands it to the driver as a ControllerError's controller_failure
            raise NodeLostError("; ".join(problems), self.failures, self.died)

    def wait_for_capacity(self) -> list[str]:
        """[] once the live nodes hold the workers; what is missing when the wait ran out
        (the wait is counted from the first restart that found them short)."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.cfg.scaling.lost_node_wait_s
        while True:
            nodes = cluster_nodes(probe=set(self.placements.values()))
            problems = cluster_shortfall(self.cfg, *live_resources(list(nodes.values())))
            if not problems or time.monotonic() >= self.deadline:
                return problems
            time.sleep(POLL_S)


def ray_callback(gate: RestartGate) -> Any:
    """`gate` as an instance of Ray Train's callback classes, which is how the controller
    picks the hooks it calls."""
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

    cls: type[Any] = type("RayRestartGate", (RestartGate, ControllerCallback, WorkerGroupCallback), {})
    out = object.__new__(cls)
    out.__dict__.update(gate.__dict__)
    return out
