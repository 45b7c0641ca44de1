"""The final line of a run that lost a node, composed without a cluster (the cluster's
answer about its nodes stands in)."""

from __future__ import annotations

from ld4mrec_dist.config import load_config
from ld4mrec_dist.train import failures
from ld4mrec_dist.train.checkpoint import save_checkpoint
from ld4mrec_dist.train.node_loss import Node, NodeLostError, write_placements

GLOO_RESET = "RuntimeError: Read error [127.0.0.1]:7094: Connection reset by peer."


def test_a_run_that_lost_a_node_says_which_what_was_kept_and_how_to_go_on(tmp_path, monkeypatch):
    from ray.train import ControllerError

    for i, epoch in enumerate([1, 2]):
        save_checkpoint(tmp_path / f"checkpoint_2026-01-01_00-00-0{i}.000000", {"epoch": epoch, "model": {}})
    (tmp_path / "checkpoint_2026-01-01_00-00-09.000000").mkdir()  # partial: the node died while writing it
    write_placements(tmp_path, {0: {"node_id": "aaa111", "node_ip": "10.0.0.1", "pid": 6},
                                1: {"node_id": "bbb222", "node_ip": "10.0.0.2", "pid": 7}})
    nodes = {"aaa111": Node("aaa111", "10.0.0.1:6380", alive=False), "bbb222": Node("bbb222", "10.0.0.2:6380", True)}
    monkeypatch.setattr(failures, "cluster_nodes", lambda probe: nodes)
    cfg = load_config(overrides=["scaling.lost_node_wait_s=5"])
    err = ControllerError(NodeLostError("CPU 2 for 2 workers × 1, the cluster has 1", {1: GLOO_RESET}, set()))
    assert failures.failure_message(err, cfg, tmp_path) == (
        f"training failed: node aaa111 (10.0.0.1:6380) was lost, and worker rank 0 with it; rank 1 failed as a "
        f"consequence ({GLOO_RESET}); the live nodes cannot hold the workers (CPU 2 for 2 workers × 1, the "
        f"cluster has 1) and none came back within 5s (scaling.lost_node_wait_s); kept: "
        f"checkpoint_2026-01-01_00-00-01.000000 (epoch 2); continue once the cluster has the nodes again with: "
        f"python jobs/train.py --resume {tmp_path}")
