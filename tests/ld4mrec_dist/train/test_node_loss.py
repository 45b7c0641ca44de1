"""Who is blamed when a worker group fails, and whether a restart can start, from plain
data: no Ray cluster (a real node loss is tests/e2e/test_node_loss.py)."""

from __future__ import annotations

import socket

from ld4mrec_dist.config import load_config
from ld4mrec_dist.train.node_loss import (
    Node,
    NodeLostError,
    blame,
    failures_of,
    first_line,
    is_peer_loss,
    live_resources,
    raylet_answers,
    read_placements,
    write_placements,
)
from ld4mrec_dist.train.resources import cluster_shortfall

GLOO_RESET = "RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:32463"
NODES = {"aaa111": Node("aaa111", "10.0.0.1:6380", alive=True, resources={"CPU": 1.0}),
         "bbb222": Node("bbb222", "10.0.0.2:6380", alive=True, resources={"CPU": 1.0})}


def _lost(node_id: str) -> dict[str, Node]:
    return {**NODES, node_id: Node(node_id, NODES[node_id].address, alive=False)}


def test_rank_on_the_lost_node_is_the_cause_and_the_survivors_error_a_consequence():
    """Rank 0's node vanished: Ray reported only rank 1's gloo error."""
    b = blame({1: GLOO_RESET}, set(), {0: "aaa111", 1: "bbb222"}, _lost("aaa111"))
    assert b.cause_ranks == [0] and [n.node_id for n in b.lost_nodes] == ["aaa111"]
    assert b.line().startswith("node aaa111 (10.0.0.1:6380) was lost, and worker rank 0 with it; "
                               "rank 1 failed as a consequence (RuntimeError: ")
    assert "Connection closed by peer" in b.line()


def test_every_rank_on_a_lost_node_is_named():
    b = blame({}, set(), {0: "aaa111", 1: "bbb222", 2: "bbb222"}, _lost("bbb222"))
    assert b.cause_ranks == [1, 2] and b.line() == "node bbb222 (10.0.0.2:6380) was lost, and worker rank 1, 2 with it"


def test_a_dead_process_comes_before_the_errors_it_caused():
    b = blame({0: GLOO_RESET, 1: "ActorDiedError: The actor died unexpectedly"}, {1}, {0: "aaa111", 1: "bbb222"},
              NODES)
    assert b.cause_ranks == [1] and b.line().startswith("worker rank 1 died; rank 0 failed as a consequence")


def test_a_real_error_is_the_cause_even_on_a_higher_rank():
    b = blame({0: GLOO_RESET, 1: "FloatingPointError: non-finite loss"}, set(), {0: "aaa111", 1: "bbb222"}, NODES)
    assert b.cause_ranks == [1] and b.line().startswith("worker rank 1 raised FloatingPointError: non-finite loss")


def test_a_silent_rank_is_the_cause_when_the_others_only_lost_their_peer():
    """Rank 0's process went away on a live node: only rank 1's gloo error arrived."""
    b = blame({1: GLOO_RESET}, set(), {0: "aaa111", 1: "bbb222"}, NODES)
    assert b.cause_ranks == [0] and b.line().startswith("worker rank 0 stopped")


def test_peer_loss_patterns():
    assert is_peer_loss(GLOO_RESET) and is_peer_loss("RuntimeError: Connection reset by peer")
    assert not is_peer_loss("FloatingPointError: non-finite training loss")


def test_first_line_takes_the_last_error_line_of_a_traceback():
    err = RuntimeError("Traceback (most recent call last):\n  File x, line 1\nValueError: bad value")
    assert first_line(err) == "ValueError: bad value"


def test_a_gloo_error_reads_as_type_and_message_without_its_source_location():
    err = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                       "[127.0.0.1]:7094: Connection reset by peer.")
    failures, died = failures_of({1: err})
    assert failures == {1: "RuntimeError: Read error [127.0.0.1]:7094: Connection reset by peer."} and died == set()


def test_a_lost_node_leaves_the_live_nodes_short():
    cfg = load_config(overrides=["scaling.num_workers=2", "scaling.cpus_per_worker=1"])
    assert cluster_shortfall(cfg, *live_resources(list(NODES.values()))) == []
    lost = list(_lost("bbb222").values())
    assert live_resources(lost) == ({"CPU": 1.0, "GPU": 0.0}, [{"CPU": 1.0}])
    assert cluster_shortfall(cfg, *live_resources(lost)) == ["CPU 2 for 2 workers × 1, the cluster has 1"]


def test_placements_round_trip_and_a_missing_file_reads_empty(tmp_path):
    assert read_placements(tmp_path) == {}
    write_placements(tmp_path, {1: {"node_id": "bbb222", "node_ip": "10.0.0.2", "pid": 7},
                                0: {"node_id": "aaa111", "node_ip": "10.0.0.1", "pid": 6}})
    assert read_placements(tmp_path) == {0: "aaa111", 1: "bbb222"}


def test_node_lost_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(NodeLostError("CPU 2 …", {1: GLOO_RESET}, {0})))
    assert (err.missing, err.failures, err.died) == ("CPU 2 …", {1: GLOO_RESET}, {0})


def test_a_closed_port_does_not_answer_and_an_open_one_does():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert raylet_answers(f"127.0.0.1:{port}")
    assert not raylet_answers(f"127.0.0.1:{port}")  # closed now: a killed raylet's port
