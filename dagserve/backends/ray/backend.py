"""The Ray Serve backend: every plan deployment its own Serve deployment.

Each remote node becomes a Serve deployment (class :class:`~.replica.NodeReplica`) with its
own replicas or autoscaling, batching, CPU/GPU share and queue bounds (``serve_options.py``); a
graph is one named Serve application (``name`` = graph name, no HTTP route), so several graphs
live side by side and are torn down alone. This module holds :class:`RayBackend`: deploying,
scaling, updating and shutting down that application, and its status. The per-request executor
runs wherever the App runs (the ingress process); its calls go through the backend's runner
(``runner.py``), to replicas over dagserve's direct transport (``direct/``: Unix sockets on its
Ray node, token-authenticated TCP to the others; chosen per node in ``direct_routing.py``), or
else through Serve handles, where a call's un-awaited response is handed whole to the next call
(Serve resolves it). ``inline`` nodes run in the ingress process (the local backend's class).

::

    app = dagserve.deploy(graph, backend="ray")                     # starts a local Ray if none
    app = dagserve.deploy(graph, backend="ray", address="auto")     # joins a running cluster
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dagserve._errors import DeployError
from dagserve._hooks import hooks
from dagserve._options import DEFAULT_REQUEST_TIMEOUT_S
from dagserve.backends.base import Backend
from dagserve.runtime.node_host import InProcessNode
from dagserve.backends.ray import cluster as ray_cluster
from dagserve.backends.ray.direct.frames import DEFAULT_FRAME_TIMEOUT_S
from dagserve.backends.ray.direct_routing import DirectRouting, direct_limits, frame_limits
from dagserve.backends.ray.replica import NodeReplica
from dagserve.backends.ray.runner import RayRunner
from dagserve.backends.ray.transports import ServeHandles, Transport, choose_transport
from dagserve.backends.ray.serve_options import (
    DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
    DEFAULT_HEALTH_CHECK_PERIOD_S,
    DEFAULT_HEALTH_CHECK_TIMEOUT_S,
    actor_options,
    deployment_options,
    replica_spec,
)
from dagserve.runtime.call_stats import merge as merge_calls
from dagserve.runtime.handles import InProcessHandles, RunnerCaller
from dagserve.runtime.status import AppStatus
from dagserve.runtime.streaming import stream_readers

if TYPE_CHECKING:
    from dagserve._options import NodeOptions
    from dagserve.compiler.plan import DeploymentSpec, Plan

__all__ = ["RayBackend"]

log = logging.getLogger("dagserve.ray")


class RayBackend(Backend):
    """Deploys a plan onto Ray Serve.

    ``address``: ``None`` uses the Ray this process is connected to, or starts a private local
    one (127.0.0.1 only, dashboard off, token auth, stopped after the last App); ``"auto"``,
    ``"ray://host:port"`` or a GCS ``"host:port"`` join a running cluster (never stopped).
    ``num_cpus`` / ``num_gpus`` / ``resources`` are what a Ray that dagserve starts declares
    (``num_gpus=1`` on a machine without GPUs declares a logical one). ``ingress_replicas=N`` also
    runs the HTTP ingress as a Serve deployment of N replicas behind Serve's proxy on 127.0.0.1.
    ``direct_max_frame_bytes`` (default ``$DAGSERVE_DIRECT_MAX_FRAME_BYTES``, else 256 MiB) and
    ``direct_frame_timeout_s`` bound what one direct-transport call carries and how long a frame
    may take to arrive (docs/ray.md#the-direct-transport).
    ``allow_unauthenticated_ray=True`` lets dagserve start a Ray without token authentication when
    the environment turns it off (refused otherwise).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: dict[str, float] | None = None,
        ingress_replicas: int | None = None,
        ingress_options: dict[str, Any] | None = None,
        proxy_port: int | None = None,
        throughput_optimized: bool | None = None,
        pass_by_reference: bool = False,
        log_to_driver: bool = False,
        health_check_period_s: float = DEFAULT_HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s: float = DEFAULT_HEALTH_CHECK_TIMEOUT_S,
        graceful_shutdown_timeout_s: float = DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
        max_threads: int = 64,
        direct_transport: bool = True,
        direct_max_frame_bytes: int | None = None,
        direct_frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S,
        allow_unauthenticated_ray: bool = False,
    ) -> None:
        if ingress_replicas is not None and (isinstance(ingress_replicas, bool) or ingress_replicas < 1):
            raise DeployError(f"ingress_replicas must be a whole number >= 1, got {ingress_replicas!r}.")
        #: What one direct-transport call may carry; the replicas and ingress replicas get the same.
        self.frame_limits = frame_limits(direct_max_frame_bytes, direct_frame_timeout_s)
        self.address = address
        self.ingress_replicas = ingress_replicas
        #: ``dagserve.asgi_app`` keyword arguments for the ingress replicas (token, limits...).
        self.ingress_options: dict[str, Any] = dict(ingress_options or {})
        self.ingress_request_timeout_s: float | None = self.ingress_options.pop(
            "request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S
        )
        self.ingress_max_ongoing_requests: int = int(self.ingress_options.pop("max_ongoing_requests", 1000))
        self._cluster_options: dict[str, Any] = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "resources": resources,
            "throughput_optimized": throughput_optimized,
            "log_to_driver": log_to_driver,
            "allow_unauthenticated": allow_unauthenticated_ray,
        }
        self._proxy_port = proxy_port
        self.pass_by_reference = pass_by_reference
        self._serve_options = {
            "health_check_period_s": health_check_period_s,
            "health_check_timeout_s": health_check_timeout_s,
            "graceful_shutdown_timeout_s": graceful_shutdown_timeout_s,
        }
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="dagserve-inline")
        self._plan: Plan | None = None
        self._specs: dict[str, DeploymentSpec] = {}
        self._local: dict[str, InProcessNode] = {}
        self._versions: dict[str, int] = {}
        self._ingress_version = 1
        self._token = uuid.uuid4().hex[:8]
        self._serve_handles = ServeHandles(by_reference=pass_by_reference)
        #: Calls to fixed-size nodes skip Serve's router (``direct/``; across Ray nodes only with token auth).
        self.direct_transport = direct_transport
        self._direct = DirectRouting(direct_transport, self.frame_limits)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = RayRunner(self)
        # Inline nodes holding handles call the other nodes through the runner (runtime/handles.py).
        caller = RunnerCaller(lambda: self._runner, lambda name: self._specs[name], lambda: self._loop)
        self._inline_handles = InProcessHandles(caller)
        self._runner.handles = self._inline_handles
        self._session: ray_cluster.RaySession | None = None
        self._runtime_env: dict[str, Any] = {}  # every deployment's: Serve's settings (cluster.py)
        self._ingress_spread: dict[str, Any] | None = None  # Serve options spreading ingress replicas
        self._app_name: str | None = None
        #: (node, replica id) -> the handle calls that replica last reported (handle_calls()).
        self._handle_calls_seen: dict[tuple[str, str], Any] = {}
        self._deployed = False
        self._attached = False  # an ingress replica's view of an application deployed elsewhere
        self._closed = False
        self._lock = threading.RLock()
        #: The HTTP address of the ingress deployment (``ingress_replicas=N``), e.g. for clients.
        self.ingress_url: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def deploy(self, plan: Plan, *, ready_timeout_s: float) -> None:
        if self._plan is not None:
            raise DeployError("This RayBackend already deployed a graph; create one backend per App.")
        self._plan = plan
        self._app_name = plan.graph_name
        self._specs = {d.name: d for d in plan.deployments}
        self._runner.reads_streams = stream_readers(plan)  # backends/ray/remote_streams.py
        self._handle_timeouts()
        try:
            for spec in plan.deployments:
                if spec.inline:
                    self._local[spec.name] = InProcessNode(self._inline_handles.spec(spec), self._pool)
            if not plan.remote_deployments and self.ingress_replicas is None:
                return  # every node runs inline in this process: Ray is not needed
            self._session = ray_cluster.acquire(self.address, **self._cluster_options)
            ray_cluster.ensure_serve(proxy_port=self._proxy_port_for_start())
            self._runtime_env = ray_cluster.replica_runtime_env()
            waiting = [d.name for d in plan.remote_deployments]
            if self.ingress_replicas is not None:
                from dagserve.backends.ray.proxy import INGRESS_DEPLOYMENT, check_proxy

                check_proxy()
                waiting.append(INGRESS_DEPLOYMENT)
            self._check_name_free()
            self._versions = {d.name: 1 for d in plan.remote_deployments}
            self._deployed = True  # from here on, shutdown deletes the application
            self._run_application()
            # Serving once every node runs a replica: the others may wait for room for long
            # (a fifth 0.25 GPU replica on one GPU); status() and the log say which and why.
            self._wait(waiting, time.monotonic() + ready_timeout_s, what="ready", serving=True)
            self._log_pending()
            self._direct.check()
            if self.ingress_replicas is not None:
                from dagserve.backends.ray.proxy import ingress_url

                self.ingress_url = ingress_url(self._app_name or "")
        except BaseException:
            # Replicas that never started (no room for them) would hold a blocking delete for the
            # whole graceful-shutdown period: let Serve remove them in the background.
            self._shutdown(wait=False)
            raise

    @classmethod
    def attached(cls, plan: Plan, versions: dict[str, int], **options: Any) -> RayBackend:
        """A backend for a graph another process deployed: it calls the deployments (and runs
        inline nodes here) but never changes or deletes them. Ingress replicas use it, with the
        deploying backend's :meth:`direct_options`."""
        backend = cls(**options)
        backend._plan = plan
        backend._app_name = plan.graph_name
        backend._specs = {d.name: d for d in plan.deployments}
        backend._handle_timeouts()
        backend._versions = dict(versions)
        backend._deployed = backend._attached = True
        for spec in plan.deployments:
            if spec.inline:
                backend._local[spec.name] = InProcessNode(backend._inline_handles.spec(spec), backend._pool)
        backend._direct.check()
        return backend

    def shutdown(self) -> None:
        self._shutdown(wait=True)

    def _shutdown(self, *, wait: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        session, self._session = self._session, None
        self._direct.close(self._loop)
        self._serve_handles.close(self._loop)
        try:
            if self._deployed and session is not None and not self._attached:
                last_owned = session.owned and session.users <= 1
                if not last_owned:  # a Ray we stop next takes every application with it
                    from ray import serve

                    with contextlib.suppress(Exception):  # Ray is already gone: nothing left to delete
                        serve.delete(self._app_name, _blocking=wait)
        finally:
            self._local.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            if session is not None:
                ray_cluster.release(session)

    def bind_loop(self, loop: Any) -> None:
        if loop is not self._loop and self._direct.pools:
            self._direct.close(self._loop)  # connections belong to the loop that opened them
        self._loop = loop
        self._serve_handles.rebind()

    @property
    def runner(self) -> RayRunner:
        return self._runner

    # -- operating -----------------------------------------------------------------------------
    def status(self) -> AppStatus:
        from dagserve.backends.ray.serve_status import node_statuses, with_models

        plan = self._plan
        graph = plan.graph_name if plan is not None else ""
        details = self._serve_details() if self._deployed and not self._closed else None
        nodes = node_statuses(self._app_name or "", list(self._specs.values()), details)
        settings = ray_cluster.settings_report(self._runtime_env) if self._deployed else {}
        nodes = with_models(self._direct.report(nodes, self._specs), self)
        return AppStatus(graph=graph, backend=self.name, nodes=nodes, settings=settings)

    def scale(self, spec: DeploymentSpec, options: NodeOptions, *, wait_s: float) -> None:
        self._check_owner()
        with self._lock:
            self._specs[spec.name] = replace(self._specs[spec.name], options=options)
            self._direct.set_limits(spec.name, options, self._loop)
            self._run_application()
        self._wait([spec.name], time.monotonic() + wait_s, what="scaled")

    def update(self, spec: DeploymentSpec, new: DeploymentSpec, *, wait_s: float) -> None:
        self._check_owner()
        old = self._specs[spec.name]
        with self._lock:
            self._specs[spec.name] = new
            self._direct.set_limits(spec.name, new.options, self._loop)
            self._handle_timeouts()
            if new.inline:
                self._local[spec.name] = InProcessNode(self._inline_handles.spec(new), self._pool)
                return
            new_code = replica_spec(old) != replica_spec(new)
            restart = new_code or actor_options(old) != actor_options(new)
            before = set(self._replica_ids(spec.name)) if restart else set()
            if new_code:
                self._versions[spec.name] += 1  # new code, constructor or batching: new replicas
            self._ingress_version += 1  # ingress replicas hold the plan: give them the new one
            self._run_application()
        self._wait([spec.name], time.monotonic() + wait_s, what="updated", replaced=before)

    def _handle_timeouts(self) -> None:
        """What the calls to deployments holding handles carry: the ``timeout_s`` in force of
        every deployment reached through handles (their replicas learn a change from the next call)."""
        plan = self._plan
        callees = {callee for _, callee in plan.calls} if plan is not None else set()
        self._runner._extras.timeouts = {name: self._specs[name].options.timeout_s for name in callees}

    def replicas(self, node: str) -> list[dict[str, Any]]:
        """The node's live replicas as Serve reports them (``replica_id``, ``state``, ``pid``,
        ``node_id``, ``actor_name`` ...), for diagnostics and tests."""
        from dagserve.backends.ray.serve_status import live_replicas

        if not self._deployed or self._closed:
            return []
        return live_replicas(self._serve_details(), self._app_name or "", node)

    def batch_sizes(self) -> dict[str, dict[int, int]]:
        """Batch sizes per batched node, summed over its live replicas (replicas that are gone are not counted)."""
        out: dict[str, dict[int, int]] = {}
        for name, spec in self._specs.items():
            if not spec.batched:
                continue
            if spec.inline:
                local = self._local.get(name)
                counts = dict(local.batch_counts) if local is not None else {}
            elif self._deployed:
                counts = self._remote_batch_counts(name)
            else:
                continue
            if counts:
                out[name] = counts
        return out

    def handle_calls(self) -> dict[tuple[str, str, str], list[float]]:
        """The calls through handles that inline nodes made here and the replicas of the other
        nodes holding handles made (runtime/call_stats.py). Each replica's last answer is kept, by
        replica id, after it stops or while it is too busy to answer, so the sums never go back
        (Prometheus would read a drop as a counter reset); without the direct transport, the
        replicas Serve's handle reaches now answer."""
        plan = self._plan
        if plan is None or not self._deployed or self._closed:
            return {}
        seen = self._handle_calls_seen
        found: list[Any] = [self._inline_handles.stats.snapshot()]  # inline nodes' calls, made here
        for name in sorted({caller for caller, _ in plan.calls}):
            spec = self._specs.get(name)
            if spec is None or spec.inline:
                continue
            answers = self._direct.stats(name, self._app_name or "", self._loop)
            if not answers:
                found.extend(self._broadcast_figures(name, "dagserve_handle_calls"))
                continue
            for answer in answers:
                replica = answer.get("replica")
                if isinstance(replica, str):
                    seen[(name, replica)] = answer.get("handle_calls") or []
                else:
                    found.append(answer.get("handle_calls"))
        return merge_calls([*found, *seen.values()])

    async def prepare(self, timeout_s: float) -> None:  # the direct pools, connected (DirectRouting.prepare)
        live = [] if self._closed else [s for s in self._specs.values() if not s.inline]
        await self._direct.prepare(live, self._app_name or "", timeout_s)

    # -- direct transport ----------------------------------------------------------------------
    def _transport(self, name: str) -> Transport:
        """The transport calls to remote node ``name`` take now (``transports.choose_transport``
        picks: the direct transport where it applies, else Serve). Runs on the App's event loop."""
        routing = None if self._closed else self._direct
        limits = direct_limits(self._specs[name])
        app = self._app_name or ""
        return choose_transport(routing, name, app, limits, lambda: self._serve_handles.transport(app, name))

    def direct_options(self) -> dict[str, Any]:
        """The direct transport's settings, for a backend attached elsewhere (ingress replicas)."""
        return self._direct.options()

    def direct_transport_refusals(self) -> dict[tuple[str, str, str], int]:
        """What the direct transport refused for this graph's nodes (limits, peers of another user,
        failed handshakes): ``(node, side, reason) -> count``, see ``DirectRouting.transport_refusals``."""
        names = [n for n, spec in self._specs.items() if not spec.inline]
        return self._direct.transport_refusals(names, self._app_name or "", self._loop) if self._deployed else {}

    def direct_refusals(self) -> dict[str, int]:
        """Per node, the direct calls this process sent that a full replica refused (each went to
        another replica or waited in the queue; none failed): replicas shared with other callers."""
        return self._direct.refusals()

    def transport(self, node: str) -> str:
        """How calls to ``node`` travel now: ``"direct"`` (dagserve's transport: ``status()`` tells
        which), ``"serve"`` (Serve's router and gRPC) or ``"inline"`` (in this process)."""
        spec = self._specs.get(node)
        if spec is None:
            raise KeyError(f"Graph {self._app_name!r} has no node {node!r}; nodes: {', '.join(self._specs)}")
        if spec.inline:
            return "inline"
        return "direct" if self._direct.is_direct(spec) else "serve"

    # -- Serve plumbing ------------------------------------------------------------------------
    def _check_owner(self) -> None:
        if self._attached:
            raise DeployError(
                f"This App only calls graph {self._app_name!r}, which another process deployed; scale and "
                "update it from the App that deployed it."
            )

    def _run_application(self) -> None:
        """(Re)deploy the graph's Serve application; deployments whose version and options did not
        change keep their replicas."""
        from ray import serve

        root = self._root()
        route_prefix = f"/{self._app_name}" if self.ingress_replicas is not None else None
        target = serve.RunTarget(root, name=self._app_name, route_prefix=route_prefix, logging_config=_LOGGING)
        try:
            serve.run_many([target], wait_for_applications_running=False)
        except Exception as exc:
            raise DeployError(f"Ray Serve refused graph {self._app_name!r}: {type(exc).__name__}: {exc}") from exc

    def _root(self) -> Any:
        """The graph's Serve application: its root deployment, bound with every other one."""
        remote = [s for s in self._specs.values() if not s.inline]
        if self.ingress_replicas is not None:
            return self._bind_ingress([self._bind(s) for s in remote])
        # The first node's deployment is the application's root; binding the others to it
        # makes Serve deploy them together (the replica ignores them).
        children = [self._bind(s) for s in remote[1:]]
        return self._bind(remote[0], _children=children) if children else self._bind(remote[0])

    def application(self, plan: Plan) -> Any:
        """The plan's Serve application (a bound deployment), for Serve to deploy rather than this
        backend: ``serve deploy`` of a file ``dagserve build`` wrote (``dagserve.rayserve.application``)."""
        self._plan, self._app_name = plan, plan.graph_name
        self._specs = {d.name: d for d in plan.deployments}
        self._versions = {d.name: 1 for d in plan.remote_deployments}
        return self._root()

    def _bind_ingress(self, nodes: list[Any]) -> Any:
        """The ingress deployment, bound with every node deployment (so Serve deploys them together)."""
        from ray import serve

        from dagserve.backends.ray.proxy import INGRESS_DEPLOYMENT, ingress_spread

        plan = self._plan
        assert plan is not None  # deploy() set it; not user input
        if INGRESS_DEPLOYMENT in self._specs:
            raise DeployError(
                f"A node is named {INGRESS_DEPLOYMENT!r}, the name of the ingress deployment; rename the node."
            )
        # Graph objects stay behind: the replicas need only the plan's specs.
        stripped = replace(plan, deployments=tuple(replace(d, source=None) for d in self._specs.values()))
        # The HTTP layer's replica class, and the ingress options with their tokens resolved here.
        replica_class, options = hooks.need("serve_ingress")(self.ingress_options)
        if self._ingress_spread is None:  # once: a node joining later must not restart them
            self._ingress_spread = ingress_spread(self.ingress_replicas or 1)
        d = serve.deployment(
            replica_class,
            name=INGRESS_DEPLOYMENT,
            num_replicas=self.ingress_replicas,
            ray_actor_options={"num_cpus": 0, **({"runtime_env": self._runtime_env} if self._runtime_env else {})},
            max_ongoing_requests=self.ingress_max_ongoing_requests,
            **self._ingress_spread,
        )
        d = d.options(version=f"{self._token}-ingress-{self._ingress_version}", _internal=True)
        return d.bind(
            stripped,
            dict(self._versions),
            options,
            self.ingress_request_timeout_s,
            self.direct_options(),
            _children=nodes,
        )

    def _bind(self, spec: DeploymentSpec, **children: Any) -> Any:
        from ray import serve

        options = deployment_options(spec, runtime_env=self._runtime_env, **self._serve_options)
        d = serve.deployment(NodeReplica, **options)
        d = d.options(version=f"{self._token}-{self._versions[spec.name]}", _internal=True)
        return d.bind(replica_spec(spec, direct=self.direct_transport, frames=self.frame_limits), **children)

    def _proxy_port_for_start(self) -> int | None:
        if self.ingress_replicas is None:
            return None
        if self._proxy_port is not None:
            return self._proxy_port
        from dagserve.backends.ray.proxy import free_port

        return free_port()

    def _check_name_free(self) -> None:
        from ray import serve

        deadline = time.monotonic() + _DELETING_WAIT_S
        while True:
            app = serve.status().applications.get(self._app_name)
            if app is None:
                return
            if str(getattr(app.status, "value", app.status)) != "DELETING" or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # an earlier App of this graph is still being torn down
        raise DeployError(
            f"A graph named {self._app_name!r} is already deployed on this Ray; shut that App down first, "
            "or give this graph another name (dagserve.Graph(..., name=...))."
        )

    def _serve_details(self) -> dict[str, Any]:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        return client.get_serve_details()  # type: ignore[no-any-return]

    def _replica_ids(self, name: str) -> list[str]:
        from dagserve.backends.ray.serve_status import replica_ids

        return replica_ids(self._serve_details(), self._app_name or "", name)

    def _wait(
        self,
        names: list[str],
        deadline: float,
        *,
        what: str,
        replaced: set[str] | None = None,
        serving: bool = False,
    ) -> None:
        """Until every named node runs exactly its target replicas (none of ``replaced``), or with
        ``serving`` at least one, or the deadline; a request no Ray node can hold fails at once."""
        from dagserve.backends.ray.serve_status import describe_wait, problems

        delay = 0.05
        while True:
            ranges = {n: self._specs[n].options.replica_range() for n in names if n in self._specs}
            found = problems(
                self._serve_details(), self._app_name or "", names, replaced or set(), ranges, serving=serving
            )
            failed = {n: p for n, p in found.items() if p.startswith("failed")}
            if failed:
                raise DeployError(describe_wait(self._app_name, failed, what, final=True))
            if not found:
                return
            if time.monotonic() >= deadline:
                raise DeployError(describe_wait(self._app_name, found, what, final=False))
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _log_pending(self) -> None:
        """Say which nodes serve with fewer replicas than asked, and why the others wait."""
        for node in self.status().nodes.values():
            if node.pending_replicas:
                log.warning(
                    "Graph %r serves, but node %r runs %d of %d replicas; %d pending: %s.",
                    self._app_name,
                    node.name,
                    node.running_replicas,
                    node.target_replicas,
                    node.pending_replicas,
                    node.pending_reason or "starting",
                )

    def _remote_batch_counts(self, name: str) -> dict[int, int]:
        return _sum_counts(self._replica_figures(name, "batches", "dagserve_batch_counts"))

    def _replica_figures(self, name: str, key: str, method: str) -> list[Any]:
        """Figure ``key`` of every live replica of node ``name``: from the direct transport's
        ``STATS`` (``ReplicaServer.stats``), else by calling the replicas' ``method``."""
        found = self._direct.stats(name, self._app_name or "", self._loop)
        if found:
            return [f.get(key) for f in found]
        return self._broadcast_figures(name, method)

    def _broadcast_figures(self, name: str, method: str) -> list[Any]:
        """What every replica of node ``name`` answers to its ``method``, through Serve's handle
        (when the direct transport cannot ask them)."""
        # Only through a handle the requests already use: a handle made here, off the App's event
        # loop, would bind Serve's router to this thread (and requests would then use it).
        handle = self._serve_handles.made(name)
        if handle is None:
            return []  # no request reached the node through this App yet: no figures either
        try:
            response = handle.broadcast(method)
            return list(response.results(timeout_s=2.0))
        except Exception:  # noqa: BLE001 - metrics are best effort; a busy or gone replica gives none
            return []


def _sum_counts(results: list[dict[int, int] | None]) -> dict[int, int]:
    return dict(sum((Counter({int(k): int(n) for k, n in c.items()}) for c in results if c), Counter()))


_LOGGING = {"enable_access_log": False}
#: How long deploy waits for an earlier application of the same name that is being deleted.
_DELETING_WAIT_S = 30.0


