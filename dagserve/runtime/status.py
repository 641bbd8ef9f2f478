"""What ``App.status()`` returns: per node, replicas and the options in force."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["AppStatus", "NodeStatus"]

NodeState = Literal["RUNNING", "UPDATING", "PENDING", "UNHEALTHY", "STOPPED"]


@dataclass(frozen=True)
class NodeStatus:
    """One deployment's state.

    ``pending_reason`` says why replicas are not running yet (for example that no Ray node has a
    free 0.25 GPU); ``options`` are the options in force; ``replica_ids`` identify the running
    replicas (stable across other nodes' scaling).

    ``transport`` is how the caller's calls reach the node now: ``"inline"`` (in the caller's
    process: inline nodes, every node of the local backend), ``"local socket"`` (the direct
    transport to replicas on the caller's Ray node), ``"cross-node"`` (the direct transport over
    TCP to replicas on other Ray nodes), ``"mixed"`` (both; ``transport_replicas`` counts the
    replicas reached each way) or ``"serve"`` (Serve's router); ``transport_note`` says why calls
    go through Serve when the direct transport is on but cannot be used.
    """

    name: str
    kind: str
    inline: bool
    state: NodeState
    target_replicas: int
    running_replicas: int
    pending_replicas: int = 0
    pending_reason: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    replica_ids: tuple[str, ...] = ()
    message: str | None = None
    transport: str | None = None
    transport_replicas: dict[str, int] = field(default_factory=dict)
    transport_note: str | None = None


@dataclass(frozen=True)
class AppStatus:
    """A deployed graph's state: ``ready`` when every node runs its target replicas.

    ``settings``: the backend's settings in force (on Ray, Serve's: those of the calling process
    and those carried to the replicas; docs/cluster.md), empty when it has none. ``jobs``: the job
    queue's figures once it is used (``queued``, ``running``, ``oldest_age_s``, ``running_here``,
    ``concurrency``, ``store``; docs/jobs.md)."""

    graph: str
    backend: str
    nodes: dict[str, NodeStatus]
    settings: dict[str, Any] = field(default_factory=dict)
    jobs: dict[str, Any] | None = None

    @property
    def ready(self) -> bool:
        return all(n.state == "RUNNING" and n.running_replicas >= n.target_replicas for n in self.nodes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "backend": self.backend,
            "ready": self.ready,
            "nodes": {k: asdict(v) for k, v in self.nodes.items()},
            "settings": self.settings,
            **({"jobs": self.jobs} if self.jobs is not None else {}),
        }
