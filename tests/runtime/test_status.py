"""``AppStatus``: ready (every node at its target) and serving (every node runs a replica)."""

from __future__ import annotations

from dagserve.runtime.status import AppStatus, NodeStatus


def test_a_graph_with_a_replica_waiting_for_room_serves_but_is_not_at_its_target() -> None:
    full = NodeStatus("clean", "function", False, "RUNNING", 1, 1)
    short = NodeStatus("OnGpu", "model", False, "UPDATING", 5, 4, 1, "no Ray node has a free 0.25 GPU")
    here = NodeStatus("here", "function", True, "RUNNING", 1, 1)
    status = AppStatus("g", "ray", {"clean": full, "OnGpu": short, "here": here})
    assert status.serving and not status.ready
    assert status.pending == {
        "OnGpu": {"running_replicas": 4, "target_replicas": 5, "pending_replicas": 1,
                  "reason": "no Ray node has a free 0.25 GPU"}
    }
    doc = status.to_dict()
    assert doc["serving"] is True and doc["ready"] is False and set(doc["pending"]) == {"OnGpu"}


def test_a_node_without_a_running_replica_is_not_serving() -> None:
    starting = NodeStatus("Model", "model", False, "UPDATING", 2, 0, 2)
    status = AppStatus("g", "ray", {"Model": starting})
    assert not status.serving and not status.ready and status.pending["Model"]["pending_replicas"] == 2
    assert AppStatus("g", "local", {}).serving
