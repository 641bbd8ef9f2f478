"""Reading Serve's view of a graph: per node replicas, states, and why replicas are pending.

Serve reports a replica that Ray cannot place only as "starting" (and, after 30 s, with a
generic message), so the reason here is worked out from the replica's resource request and the
free resources of each Ray node: "no Ray node has a free 0.25 GPU" rather than a silent hang. A
request no Ray node can ever hold (none has that much, and no autoscaler can add one that has) is
*infeasible*: waiting cannot help, so it fails at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dagserve.runtime.multiplex import model_report
from dagserve.runtime.status import NodeStatus, models_status

if TYPE_CHECKING:
    from dagserve.compiler.plan import DeploymentSpec

__all__ = ["describe_wait", "live_replicas", "node_statuses", "problems", "replica_ids", "with_models"]

_RUNNING = "RUNNING"
_EPS = 1e-9


def _deployment(details: dict[str, Any] | None, app: str, name: str) -> dict[str, Any] | None:
    if not details:
        return None
    application = (details.get("applications") or {}).get(app)
    if not application:
        return None
    return (application.get("deployments") or {}).get(name)


def _state(value: Any) -> str:
    return str(getattr(value, "value", value))


def _live(dep: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in dep.get("replicas") or [] if _state(r.get("state")) not in ("STOPPING", "STOPPED")]


def replica_ids(details: dict[str, Any] | None, app: str, name: str) -> list[str]:
    """Ids of the node's live replicas (any state but stopping)."""
    dep = _deployment(details, app, name)
    return [str(r["replica_id"]) for r in _live(dep)] if dep else []


def live_replicas(details: dict[str, Any] | None, app: str, name: str) -> list[dict[str, Any]]:
    """The node's live replicas (any state but stopping), each as Serve describes it."""
    dep = _deployment(details, app, name)
    if not dep:
        return []
    return [{**r, "state": _state(r.get("state"))} for r in _live(dep)]


def node_statuses(app: str, specs: list[DeploymentSpec], details: dict[str, Any] | None) -> dict[str, NodeStatus]:
    """One :class:`~dagserve.NodeStatus` per plan deployment."""
    out: dict[str, NodeStatus] = {}
    resources: _Resources | None = None
    for spec in specs:
        options = spec.options.in_force()
        if spec.inline:
            out[spec.name] = NodeStatus(
                name=spec.name,
                kind=spec.kind,
                inline=True,
                state="RUNNING",
                target_replicas=1,
                running_replicas=1,
                options=options,
                message="runs inside the ingress process",
            )
            continue
        dep = _deployment(details, app, spec.name)
        if dep is None:
            out[spec.name] = NodeStatus(
                name=spec.name,
                kind=spec.kind,
                inline=False,
                state="PENDING" if details else "STOPPED",
                target_replicas=spec.options.initial_replicas(),
                running_replicas=0,
                pending_replicas=spec.options.initial_replicas() if details else 0,
                pending_reason="Serve has not created the deployment yet" if details else None,
                options=options,
            )
            continue
        live = _live(dep)
        running = [r for r in live if _state(r.get("state")) == _RUNNING]
        target = int(dep.get("target_num_replicas") or 0)
        pending = max(0, target - len(running))
        reason = None
        if pending:
            resources = resources or _Resources.read()
            reason = resources.why_pending(dep.get("required_resources") or {})
        serve_status = _state(dep.get("status"))
        message = str(dep.get("message") or "") or None
        if serve_status == "HEALTHY":
            state = "RUNNING"
        elif serve_status in ("UNHEALTHY", "DEPLOY_FAILED"):
            state = "UNHEALTHY"
        else:
            state = "UPDATING" if running else "PENDING"
        out[spec.name] = NodeStatus(
            name=spec.name,
            kind=spec.kind,
            inline=False,
            state=state,  # type: ignore[arg-type]
            target_replicas=target,
            running_replicas=len(running),
            pending_replicas=pending,
            pending_reason=reason,
            options=options,
            replica_ids=tuple(sorted(str(r["replica_id"]) for r in running)),
            message=_short(message) if message else None,
        )
    return out


def problems(
    details: dict[str, Any] | None,
    app: str,
    names: list[str],
    replaced: set[str],
    ranges: dict[str, tuple[int, int]],
    *,
    serving: bool = False,
) -> dict[str, str]:
    """Why each named node is not (yet) serving as asked; empty when all are.

    ``ranges`` gives each node's allowed replica target (min, max); ``replaced`` are replica ids
    that must be gone (an update's old replicas). With ``serving``, a node with a replica running
    counts when the others wait for room on a Ray node, not when they are placed and starting
    (``deploy``: they may wait for long, and are reported as pending). A reason starting with
    ``failed`` means waiting longer will not help (a failed constructor, an infeasible request)."""
    out: dict[str, str] = {}
    resources: _Resources | None = None
    for name in names:
        dep = _deployment(details, app, name)
        if dep is None:
            out[name] = "Serve has not created the deployment yet"
            continue
        status = _state(dep.get("status"))
        if status == "DEPLOY_FAILED":
            out[name] = "failed: " + _failure(str(dep.get("message") or ""))
            continue
        live = _live(dep)
        running = [r for r in live if _state(r.get("state")) == _RUNNING]
        target = int(dep.get("target_num_replicas") or 0)
        old = replaced & {str(r["replica_id"]) for r in dep.get("replicas") or []}
        lo, hi = ranges.get(name, (0, 1 << 30))
        if not lo <= target <= hi:
            asked = f"{lo}" if lo == hi else f"{lo} to {hi}"
            out[name] = f"Serve still targets {target} replicas (asked for {asked})"
        elif len(running) < target:
            resources = resources or _Resources.read()
            required = dep.get("required_resources") or {}
            placed = [r for r in live if _state(r.get("state")) != _RUNNING and r.get("node_id")]
            if serving and running and not placed and not resources.has_room(required):
                continue  # serving; the others wait for room (status() and the log say so)
            never = resources.infeasible(required)
            if never is not None:
                out[name] = f"failed: each replica asks for {_request(required)}, and {never}"
                continue
            why = resources.why_pending(required)
            out[name] = f"{len(running)} of {target} replicas running; {why}"
        elif len(live) > target or len(dep.get("replicas") or []) > len(live):
            out[name] = (
                f"{len(dep.get('replicas') or [])} replicas for a target of {target}; the extra ones are draining"
            )
        elif old:
            out[name] = f"{len(old)} replica(s) of the previous version still running"
        elif status != "HEALTHY":
            out[name] = f"Serve reports {status}" + (
                f": {_short(str(dep.get('message')))}" if dep.get("message") else ""
            )
    return out


class _Resources:
    """Per Ray node: total and free resources, and the node types an autoscaler may add (one GCS
    read each, shared by a status call)."""

    def __init__(
        self,
        total: dict[str, dict[str, float]],
        free: dict[str, dict[str, float]],
        addable: list[dict[str, float]] | None = None,
    ) -> None:
        self.total = total
        self.free = free
        self.addable = addable or []

    @classmethod
    def read(cls) -> _Resources:
        try:
            from ray._private import state

            total, free = dict(state.total_resources_per_node()), dict(state.available_resources_per_node())
        except Exception:  # noqa: BLE001  # pragma: no cover - an older Ray without these helpers
            return cls({}, {})
        return cls(total, free, _addable_node_types(state.state))

    def infeasible(self, required: dict[str, Any]) -> str | None:
        """Why no Ray node can ever hold ``required`` (none has it, no autoscaler can add one that
        has), or ``None`` when one can, or when Ray told nothing."""
        need = _need(required)
        nodes = [*self.total.values(), *self.addable]
        if not need or not self.total or any(_fits(need, n) for n in nodes):
            return None
        for res, amount in need.items():
            biggest = max((n.get(res, 0.0) for n in nodes), default=0.0)
            if biggest + _EPS < amount:
                return (
                    f"no Ray node has {_amount(res, amount)} at all (the largest has {_amount(res, biggest, bare=True)}); "
                    "add a node that has it, or lower the node's request"
                )
        return "no Ray node has all of it at once; add a node that has, or lower the node's request"

    def has_room(self, required: dict[str, Any]) -> bool:
        """Has a Ray node the free resources for one more replica (or does Ray tell nothing)?"""
        need = _need(required)
        return not self.total or any(_fits(need, f) for f in self.free.values())

    def why_pending(self, required: dict[str, Any]) -> str:
        need = _need(required)
        never = self.infeasible(required)
        if never is not None:
            return never
        if self.has_room(required):
            return "starting: Ray is placing the replica or running its constructor"
        if not any(_fits(need, t) for t in self.total.values()):
            return f"no Ray node has {_request(required)} yet; waiting for the autoscaler to add one that has"
        for res, amount in need.items():
            if not any(f.get(res, 0.0) + _EPS >= amount for f in self.free.values()):
                total = sum(t.get(res, 0.0) for t in self.total.values())
                free = sum(f.get(res, 0.0) for f in self.free.values())
                return (
                    f"no Ray node has a free {_amount(res, amount)} ({_amount(res, total - free, bare=True)} of "
                    f"{_amount(res, total, bare=True)} in use by other replicas); free some, add nodes, or lower the request"
                )
        return f"no single Ray node has {_request(required)} free at once"


def _need(required: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in required.items() if isinstance(v, (int, float)) and v > 0}


def _fits(need: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(r, 0.0) + _EPS >= a for r, a in need.items())


def _request(required: dict[str, Any]) -> str:
    return ", ".join(_amount(r, a) for r, a in _need(required).items()) or "nothing"


def _addable_node_types(state: Any) -> list[dict[str, float]]:
    """Resources of each node type a Ray autoscaler may still add (none without an autoscaler)."""
    try:
        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - no answer: judge by the nodes there are
        return []
    if config is None:
        return []
    out = []
    for group in config.node_group_configs:
        if group.max_count != 0:  # -1: no limit
            # A resource of -1 is unlimited in Ray's config: count it as more than any request.
            out.append({str(k): float("inf") if v == -1 else float(v) for k, v in group.resources.items()})
    return out


def _amount(res: str, value: float, *, bare: bool = False) -> str:
    if res == "memory":
        return f"{value / 2**20:.0f} MiB of memory"
    if res in ("CPU", "GPU"):
        return f"{value:g} {res}" if not bare else f"{value:g}"
    return f"{value:g} of resource {res!r}" if not bare else f"{value:g}"


def _failure(message: str) -> str:
    """The useful line of Serve's failure message (dagserve's own error when there is one)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in reversed(lines):
        if "failed to start" in line and "Node " in line:
            return line.split("DeployError: ", 1)[-1]
    errors = [line for line in lines if "Error" in line.split(":", 1)[0]]
    return _short(errors[-1] if errors else (lines[-1] if lines else "Serve gave no reason"))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_wait(app: str | None, problems: dict[str, str], what: str, *, final: bool) -> str:
    """Why deployments are not ready: failed for good (``final``) or still waiting."""
    if final:
        lines = "; ".join(f"node {name!r}: {why.removeprefix('failed: ')}" for name, why in problems.items())
        return f"Graph {app!r} could not be deployed on Ray: {lines}."
    lines = "; ".join(f"{name}: {why}" for name, why in problems.items())
    names = ", ".join(repr(n) for n in problems)
    return (
        f"Graph {app!r} was not {what} in time: node(s) {names} not ready ({lines}). Free or add the "
        "resources they wait for, lower their requests, or raise the wait (ready_timeout_s / wait_s)."
    )


def with_models(nodes: dict[str, NodeStatus], backend: Any) -> dict[str, NodeStatus]:
    """``nodes`` with each multiplexed node's models (:attr:`NodeStatus.models`): from the reports
    its replicas send the direct pool (``MODELS`` notices), else asked through the node's Serve
    handle (``dagserve_models``), for inline nodes from this process's replicas."""
    out = dict(nodes)
    for name, spec in backend._specs.items():
        if spec.multiplexed is None or name not in out:
            continue
        reports: dict[str, dict[str, Any] | None] = {}
        local = backend._local.get(name)
        pool = backend._direct.pools.get(name)
        handle = backend._serve_handles.made(name)  # one the requests already use (transports.py)
        if local is not None:
            reports = {r.id: model_report(r.host.instance) for r in local.replicas if not r.draining}
        elif pool is not None and pool.usable:
            reports = pool.model_reports()
        elif handle is not None and asyncio._get_running_loop() is None:
            try:  # (a handle made here would bind Serve's router to this thread)
                found = handle.broadcast("dagserve_models").results(timeout_s=2.0)
            except Exception:  # noqa: BLE001 - status is best effort: a busy or gone replica gives none
                found = []
            reports = {r["replica"]: r for r in found if isinstance(r, dict)}
        out[name] = replace(out[name], models=models_status(spec.multiplexed.max_models_per_replica, reports))
    return out
