"""What ``App.status()`` returns: per node, replicas and the options in force."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["AppStatus", "NodeStatus", "models_status"]

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
    replicas reached each way), ``"serve"`` (Serve's router) or ``"no calls yet"`` (the direct
    transport connects at a node's first call); ``transport_note`` says why calls go through Serve
    when the direct transport is on but cannot be used, or that nothing has called the node yet.

    ``models``: a multiplexed node's models (docs/multiplexing.md), empty for other nodes:
    ``max_models_per_replica``, ``replicas`` (per replica id, the model ids it holds, least
    recently used first), and summed over those replicas ``loads``, ``load_seconds``,
    ``evictions``, ``hits``, ``misses``, ``load_failures`` and ``hit_ratio`` (hits over hits and
    misses; ``None`` before the first call). A hit is a call served without a load of its own (its
    model was loaded, or being loaded for another call); a miss is a call that loaded it.
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
    models: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AppStatus:
    """A deployed graph's state: ``ready`` when every node runs its target replicas; ``serving``
    as soon as every node runs at least one (the graph answers requests; ``pending`` tells which
    nodes still wait for replicas, say for room on the cluster).

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

    @property
    def serving(self) -> bool:
        """Every node has a running replica (or runs inline), so requests are answered."""
        return all(n.inline or (n.running_replicas > 0 and n.state != "STOPPED") for n in self.nodes.values())

    @property
    def pending(self) -> dict[str, dict[str, Any]]:
        """Per node short of its target: ``pending_replicas`` (started, not running yet) and ``reason``."""
        return {
            name: {"running_replicas": n.running_replicas, "target_replicas": n.target_replicas,
                   "pending_replicas": n.pending_replicas, "reason": n.pending_reason}
            for name, n in self.nodes.items()
            if not n.inline and n.running_replicas < n.target_replicas
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "backend": self.backend,
            "ready": self.ready,
            "serving": self.serving,
            "pending": self.pending,
            "nodes": {k: asdict(v) for k, v in self.nodes.items()},
            "settings": self.settings,
            **({"jobs": self.jobs} if self.jobs is not None else {}),
        }


_COUNTERS = ("loads", "load_seconds", "evictions", "hits", "misses")


def models_status(max_models: int | None, reports: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """:attr:`NodeStatus.models` from each replica's cache report (``ModelCache.report()``;
    ``None``: the replica did not answer). Empty for a node that is not multiplexed."""
    if max_models is None:
        return {}
    out: dict[str, Any] = {"max_models_per_replica": max_models, "replicas": {}}
    out.update(dict.fromkeys(_COUNTERS, 0))
    out["load_failures"] = 0
    for replica, report in reports.items():
        if report is None:
            continue
        out["replicas"][replica] = list(report.get("held", ()))
        for key in _COUNTERS:
            out[key] += report.get(key, 0)
        out["load_failures"] += report.get("failures", 0)
    asked = out["hits"] + out["misses"]
    out["hit_ratio"] = round(out["hits"] / asked, 4) if asked else None
    return out
