"""The Ray Serve backend: every plan deployment its own Serve deployment.

Each remote node becomes a Serve deployment (class :class:`~._ray_replica.NodeReplica`) with its
own replicas or autoscaling, batching, CPU/GPU share and queue bounds; a graph is one named
Serve application (``name`` = graph name, no HTTP route), so several graphs live side by side
and are torn down alone. The per-request executor runs wherever the App runs (the ingress
process) and calls replicas on its machine over Unix sockets (``direct.py``), the others through
Serve handles, where a call's un-awaited response is handed whole to the next call (Serve
resolves it). ``inline`` nodes run in the ingress process through the local backend's
deployment class.

::

    app = dagserve.deploy(graph, backend="ray")                     # starts a local Ray if none
    app = dagserve.deploy(graph, backend="ray", address="auto")     # joins a running cluster
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dagserve._hooks import hooks
from dagserve._options import DEFAULT_REQUEST_TIMEOUT_S
from dagserve._errors import AppClosedError, DagserveError, DeployError, NodeError, OverloadedError, RequestTimeoutError
from dagserve.runtime.replicas import QueueFull
from dagserve.runtime.status import AppStatus
from dagserve.backends.ray import cluster as ray_cluster
from dagserve.backends.base import Backend
from dagserve.backends.ray.direct.directory import replica_stats, socket_dir
from dagserve.backends.ray.direct.pool import DirectCall, DirectPool, PoolClosed, ReplicaLost
from dagserve.backends.ray.direct.protocol import DEFAULT_FRAME_TIMEOUT_S, DEFAULT_MAX_FRAME_BYTES, FrameLimits
from dagserve.backends.ray.replica import NodeReplica, ReplicaSpec, ship
from dagserve.backends.local import _LocalDeployment

if TYPE_CHECKING:
    from dagserve.runtime.executor import RequestContext
    from dagserve._options import NodeOptions
    from dagserve.compiler.plan import DeploymentSpec, Plan, Step

__all__ = ["RayBackend", "deployment_options"]

log = logging.getLogger("dagserve.ray")

#: Serve health-check cadence for node replicas: faster than Serve's 10 s / 30 s so a hung
#: replica is replaced within ~15 s (docs/reliability.md), slow enough to cost nothing.
DEFAULT_HEALTH_CHECK_PERIOD_S = 5.0
DEFAULT_HEALTH_CHECK_TIMEOUT_S = 10.0
#: A replica being removed (scale-down, update, shutdown) finishes its requests for up to this long.
DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S = 10.0
#: How often a draining replica checks whether it is idle (Serve's default is 2 s).
_GRACEFUL_SHUTDOWN_WAIT_LOOP_S = 0.5
#: A constructor that raises is retried this many times before the node is reported failed
#: (Serve's default, 20, hides a deterministic __init__ error behind minutes of retries).
_MAX_CONSTRUCTOR_RETRIES = 3
#: Replica range for ``num_replicas="auto"``, matching ``NodeOptions.replica_range``.
_AUTO_SCALING = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2.0}


def deployment_options(
    spec: DeploymentSpec,
    *,
    health_check_period_s: float = DEFAULT_HEALTH_CHECK_PERIOD_S,
    health_check_timeout_s: float = DEFAULT_HEALTH_CHECK_TIMEOUT_S,
    graceful_shutdown_timeout_s: float = DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
) -> dict[str, Any]:
    """The ``serve.deployment(...)`` keyword arguments for one plan deployment."""
    o = spec.options
    actor: dict[str, Any] = {"num_cpus": o.num_cpus}
    if o.num_gpus:
        actor["num_gpus"] = o.num_gpus
    if o.memory is not None:
        actor["memory"] = o.memory
    if o.resources:
        actor["resources"] = dict(o.resources)
    out: dict[str, Any] = {
        "name": spec.name,
        "ray_actor_options": actor,
        "max_ongoing_requests": o.effective_max_ongoing_requests,
        "health_check_period_s": health_check_period_s,
        "health_check_timeout_s": health_check_timeout_s,
        "graceful_shutdown_timeout_s": graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": _GRACEFUL_SHUTDOWN_WAIT_LOOP_S,
        "max_constructor_retry_count": _MAX_CONSTRUCTOR_RETRIES,
    }
    if o.max_queued_requests is not None:
        out["max_queued_requests"] = o.max_queued_requests
    if o.autoscaling is not None:
        a = o.autoscaling
        config: dict[str, Any] = {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
        }
        for key in ("initial_replicas", "upscale_delay_s", "downscale_delay_s"):
            value = getattr(a, key)
            if value is not None:
                config[key] = value
        out["autoscaling_config"] = config
    elif o.num_replicas == "auto":
        out["autoscaling_config"] = dict(_AUTO_SCALING)
    else:
        out["num_replicas"] = o.num_replicas
    return out


def replica_spec(spec: DeploymentSpec, *, direct: bool = True, frames: FrameLimits | None = None) -> ReplicaSpec:
    """What a replica is constructed with (no graph objects, so it pickles small)."""
    o = spec.options
    return ReplicaSpec(
        name=spec.name,
        kind=spec.kind,
        target=ship(spec.target),
        methods=spec.methods,
        async_methods=frozenset(spec.async_methods),
        init_args=tuple(spec.init_args),
        init_kwargs=dict(spec.init_kwargs),
        max_batch_size=o.max_batch_size,
        batch_wait_timeout_s=o.batch_wait_timeout_s,
        direct=direct,
        frames=frames or FrameLimits(),
    )


# ------------------------------------------------------------------------------------------------
# Calls in flight
# ------------------------------------------------------------------------------------------------

_serve_errors: tuple[type[BaseException], ...] | None = None


def _errors() -> tuple[Any, ...]:
    """(RayTaskError, queue-full errors, replica-lost errors, cancellation errors), imported once."""
    global _serve_errors
    if _serve_errors is None:
        from ray import exceptions as rex
        from ray.serve import exceptions as sex

        lost = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, sex.ReplicaUnavailableError, ReplicaLost)
        backpressure = (sex.BackPressureError, QueueFull)
        _serve_errors = (rex.RayTaskError, backpressure, lost, (rex.TaskCancelledError,))  # type: ignore[assignment]
    return _serve_errors  # type: ignore[return-value]


class _Pending:
    """One call step in flight, through a Serve handle or the direct transport (``pool``).

    Awaiting it gives the step's result (errors turned into dagserve's typed errors, lost replicas
    retried for ``retries=N`` nodes). Handed whole to the runner as an argument of the next Serve
    call, it is replaced by the underlying ``DeploymentResponse``, which Serve resolves in the next
    replica. An upstream call whose value must be checked here first (``retries`` or
    ``timeout_s``), or feeds a direct call, is awaited before the next call is sent.

    It also records its node's own time in the request's timings (the executor sees only when a
    call was handed on): from when it was sent, or when the last of the calls it takes whole
    finished, to when its result was ready. A call handed on whole is never awaited here; Serve
    tells when its result is ready, and the call that took it records both times.
    """

    __slots__ = (
        "_dispatch",
        "_finished",
        "_response",
        "_sent",
        "_task",
        "_wants_values",
        "_watched",
        "args",
        "ctx",
        "handle",
        "header",
        "kwargs",
        "pool",
        "spec",
        "step",
        "upstream",
    )

    def __init__(
        self,
        handle: Any,
        spec: DeploymentSpec,
        step: Step,
        header: tuple[str, str, str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ctx: RequestContext | None = None,
        pool: DirectPool | None = None,
    ) -> None:
        self.ctx = ctx
        self.handle = handle
        self.pool = pool
        self.spec = spec
        self.step = step
        self.header = header
        self.args = args
        self.kwargs = kwargs
        self.upstream = [a for a in (*args, *kwargs.values()) if isinstance(a, _Pending)]
        self._response: Any = None
        self._dispatch: asyncio.Future[Any] | None = None
        self._task: asyncio.Future[Any] | None = None
        self._sent: float | None = None  # time.perf_counter() values
        self._finished: float | None = None
        self._watched = False
        # A node with timeout_s gets its inputs as values, so its clock starts when they are ready
        # (as on the local backend), not while an upstream node still runs.
        # A direct call sends values: a Serve response cannot travel over its socket.
        self._wants_values = spec.options.timeout_s is not None or pool is not None
        if all(u.passable for u in self.upstream) and not (self.upstream and self._wants_values):
            self._response = self._send(args, kwargs)
        else:
            self._dispatch = asyncio.ensure_future(self._send_later())

    @property
    def passable(self) -> bool:
        """May this call's response go whole to the next call (no check needed here first)?"""
        o = self.spec.options
        return self._response is not None and self.pool is None and not o.retries and o.timeout_s is None

    # -- sending -------------------------------------------------------------------------------
    def _send(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._sent is None:  # a retry is part of the node's time
            self._sent = time.perf_counter()
        if self.pool is not None:
            # Upstream calls were awaited before the first send (a retry finds them finished).
            args = tuple(_value(a) for a in args)
            if kwargs:
                kwargs = {k: _value(v) for k, v in kwargs.items()}
            return self.pool.call(self.header, args, kwargs)
        args = tuple(_whole(a) for a in args)
        if kwargs:
            kwargs = {k: _whole(v) for k, v in kwargs.items()}
        return self.handle.remote(self.header, *args, **kwargs)

    def _watch(self) -> None:
        """This call's response goes whole to the next call: note when its result is ready."""
        if not self._watched:
            self._watched = True
            _when_done(self._response, self._mark_finished)

    def _mark_finished(self, _: Any = None) -> None:
        # May run on another thread (Ray's or the router's): one attribute store, nothing else.
        if self._finished is None:
            self._finished = time.perf_counter()

    async def _send_later(self) -> Any:
        """Resolve or wait for the upstream calls that cannot go whole, then send."""

        async def ready(a: Any) -> Any:
            if not isinstance(a, _Pending):
                return a
            o = a.spec.options
            if a.pool is not None or o.retries or o.timeout_s is not None or self._wants_values:
                return await a  # its value, checked (and retried) here
            await a.response()
            return a  # still passed whole

        args = tuple([await ready(a) for a in self.args])
        kwargs = {k: await ready(v) for k, v in self.kwargs.items()}
        self._response = self._send(args, kwargs)
        return self._response

    async def response(self) -> Any:
        """The ``DeploymentResponse`` (after the upstream calls it waits on, if any)."""
        if self._response is None and self._dispatch is not None:
            await self._dispatch
        return self._response

    # -- receiving -----------------------------------------------------------------------------
    def __await__(self) -> Any:
        if self._task is None:
            self._task = asyncio.ensure_future(self._result())
        return self._task.__await__()

    async def _result(self) -> Any:
        timeout = self.spec.options.timeout_s
        try:
            if timeout is None:
                return await self._receive()
            try:
                async with asyncio.timeout(timeout):
                    return await self._receive()
            except TimeoutError as exc:
                if isinstance(exc, RequestTimeoutError):
                    raise
                name = self.step.name
                raise RequestTimeoutError(
                    f"Node {name!r} did not answer within its timeout_s={timeout:g}; raise timeout_s or make "
                    "the node faster.",
                    node=name,
                ) from None
        finally:
            self._finished = time.perf_counter()
            if self.ctx is not None:
                self._record(self.ctx.timings)

    def _record(self, timings: dict[str, float]) -> None:
        """Put this call's own time in ``timings``, then that of the calls it took whole that
        nobody awaited here (their time is known only now)."""
        if self._sent is None or self._finished is None:
            return  # never sent (an input failed) or not finished: the executor's time stands
        ready = max([self._sent, *(u._finished for u in self.upstream if u._finished is not None)])
        timings[self.step.name] = max(0.0, self._finished - ready)
        for u in self.upstream:
            if u._task is None:
                u._record(timings)

    async def _receive(self) -> Any:
        task_error, backpressure, lost, cancelled = _errors()
        retries = self.spec.options.retries
        attempt = 0
        while True:
            try:
                response = await self.response()  # a direct call first waits for its inputs' values
            except asyncio.CancelledError:
                self._blame_upstream()
                self.cancel()
                raise
            try:
                return await response
            except asyncio.CancelledError:
                self._blame_upstream()
                self.cancel()
                raise
            except task_error as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, DagserveError):
                    raise cause from exc
                if isinstance(cause, lost):
                    await self._raise_upstream_failure()
                    error: BaseException = cause
                else:
                    raise self._node_error(cause if isinstance(cause, BaseException) else exc) from exc
            except backpressure as exc:
                await self._raise_upstream_failure()
                raise self._overloaded(exc) from exc
            except lost as exc:
                await self._raise_upstream_failure()
                error = exc
            except cancelled as exc:
                await self._raise_upstream_failure()
                raise self._node_error(exc) from exc
            except PoolClosed as exc:  # not retried: the App is going away
                raise AppClosedError(
                    f"The App shut down while node {self.step.name!r} was running this request."
                ) from exc
            except DagserveError:
                raise
            except Exception as exc:
                await self._raise_upstream_failure()
                raise self._node_error(exc) from exc
            # The replica serving this call was lost: retry on another one if the node allows it.
            if attempt >= retries:
                raise self._lost_error(error, attempt) from error
            attempt += 1
            self._response = self._send(self.args, self.kwargs)

    async def _raise_upstream_failure(self) -> None:
        """When an upstream call failed, that failure (with its node name) is the one to report."""
        for u in self.upstream:
            await u  # raises the upstream node's error, if it failed

    def _blame_upstream(self) -> None:
        """At a deadline, a call still waiting for its inputs is not the one running: report the
        upstream calls it waits for (the executor counts a handed-on call done once handed on)."""
        ctx = self.ctx
        waiting = self._waiting_on()
        if ctx is None or not waiting:
            return
        ctx.running.discard(self.step.name)
        ctx.running.update(u.step.name for u in waiting)

    def _waiting_on(self) -> list[_Pending]:
        """The upstream calls this call still waits for (it is not on a replica yet)."""
        if not self.upstream or _assigned(self._response):
            return []
        out: list[_Pending] = []
        for u in self.upstream:
            if not _finished(u):
                out.extend(u._waiting_on() or [u])
        return out

    def cancel(self) -> None:
        """Cancel this call and the calls it consumes (best effort, as Serve allows)."""
        if self._dispatch is not None and not self._dispatch.done():
            self._dispatch.cancel()
        if self._response is not None:
            with contextlib.suppress(Exception):  # cancelling a finished or lost call is not an error
                self._response.cancel()
        for u in self.upstream:
            u.cancel()

    # -- errors --------------------------------------------------------------------------------
    def _node_error(self, exc: BaseException) -> NodeError:
        name = self.step.name
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else "(no message)"
        return NodeError(f"Node {name!r} raised {type(exc).__name__}: {text}", node=name, error_type=type(exc).__name__)

    def _overloaded(self, exc: Any) -> OverloadedError:
        name = self.step.name
        cap = self.spec.options.max_queued_requests
        retry_after = getattr(exc, "retry_after_s", None) or 1.0
        return OverloadedError(
            f"Node {name!r} is overloaded: its queue is full (max_queued_requests={cap}). Retry later, or add "
            "replicas.",
            node=name,
            retry_after_s=float(retry_after),
        )

    def _lost_error(self, exc: BaseException, attempts: int) -> NodeError:
        name = self.step.name
        tried = f" after {attempts} retr{'y' if attempts == 1 else 'ies'}" if attempts else ""
        hint = "" if self.spec.options.retries else " Declare the node with retries=N if it is safe to run it again."
        return NodeError(
            f"Node {name!r} failed: the replica serving the request was lost{tried} ({type(exc).__name__}); "
            f"Serve replaces lost replicas.{hint}",
            node=name,
            error_type=type(exc).__name__,
        )


def _value(a: Any) -> Any:
    """An argument's value: a finished upstream call's result, or the argument itself."""
    return a._task.result() if isinstance(a, _Pending) else a


def _whole(a: Any) -> Any:
    """An argument for a Serve call: an upstream call goes as its response (Serve resolves it)."""
    if isinstance(a, _Pending):
        a._watch()
        return a._response
    return a


def _when_done(response: Any, callback: Any) -> None:
    """Call ``callback`` (on any thread) once a Serve call's result is ready, without fetching it.

    The response is handed to a replica first (its ``_replica_result_future``); the replica's
    result then takes done callbacks, as Serve's router adds its own. Without those fields (a Serve
    that changed them), nothing is called and the call's time stays unknown.
    """
    future = getattr(response, "_replica_result_future", None)
    if future is None:
        return

    def assigned(f: Any) -> None:
        if not f.cancelled() and f.exception() is None:
            add = getattr(f.result(), "add_done_callback", None)
            if add is not None:
                add(callback)

    future.add_done_callback(assigned)


def _assigned(response: Any) -> bool:
    """Has this call reached a replica yet? (False when unknown.)"""
    if isinstance(response, DirectCall):
        return response.assigned
    future = getattr(response, "_replica_result_future", None)
    return bool(future is not None and future.done() and not future.cancelled())


def _finished(p: _Pending) -> bool:
    """Did this call's result come back to us (only known for calls awaited here)?"""
    return p._task is not None and p._task.done() and not p._task.cancelled()


class _RayRunner:
    """Performs call steps: remote ones over the direct transport or Serve handles, inline ones here."""

    passthrough = True

    def __init__(self, backend: RayBackend) -> None:
        self._backend = backend

    def call(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: RequestContext) -> Any:
        name: str = step.deployment  # type: ignore[assignment]
        b = self._backend
        if step.inline:
            return b._local[name].call(step.method, args, kwargs)  # type: ignore[arg-type]
        header = (step.method or "__call__", step.name, ctx.request_id)
        pool = b._direct_pool(name)
        handle = None if pool is not None else b._handle(name)
        return _Pending(handle, b._specs[name], step, header, args, kwargs, ctx, pool)


# ------------------------------------------------------------------------------------------------
# The backend
# ------------------------------------------------------------------------------------------------


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
        self.frame_limits = _frame_limits(direct_max_frame_bytes, direct_frame_timeout_s)
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
        self._local: dict[str, _LocalDeployment] = {}
        self._versions: dict[str, int] = {}
        self._ingress_version = 1
        self._token = uuid.uuid4().hex[:8]
        self._handles: dict[str, Any] = {}
        #: Calls to fixed-size nodes on a one-machine Ray skip Serve's router (``direct.py``).
        self.direct_transport = direct_transport
        self._pools: dict[str, DirectPool | None] = {}
        self._direct_cluster: str | None = None  # the Ray cluster's GCS address, while direct applies
        self._direct_checked = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = _RayRunner(self)
        self._session: ray_cluster.RaySession | None = None
        self._app_name: str | None = None
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
        try:
            for spec in plan.deployments:
                if spec.inline:
                    self._local[spec.name] = _LocalDeployment(spec, self._pool)
            if not plan.remote_deployments and self.ingress_replicas is None:
                return  # every node runs inline in this process: Ray is not needed
            self._session = ray_cluster.acquire(self.address, **self._cluster_options)
            ray_cluster.ensure_serve(proxy_port=self._proxy_port_for_start())
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
            self._check_direct()
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
        backend._versions = dict(versions)
        backend._deployed = backend._attached = True
        for spec in plan.deployments:
            if spec.inline:
                backend._local[spec.name] = _LocalDeployment(spec, backend._pool)
        backend._check_direct()
        return backend

    def shutdown(self) -> None:
        self._shutdown(wait=True)

    def _shutdown(self, *, wait: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        session, self._session = self._session, None
        self._close_handles()
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
        if loop is not self._loop and self._pools:
            self._close_pools()  # connections belong to the loop that opened them
        self._loop = loop
        if self._handles and not _router_in_own_loop():
            # Serve's router then lives on the loop that first used the handle: make new handles.
            self._handles = {}

    @property
    def runner(self) -> _RayRunner:
        return self._runner

    # -- operating -----------------------------------------------------------------------------
    def status(self) -> AppStatus:
        from dagserve.backends.ray.status import node_statuses

        plan = self._plan
        graph = plan.graph_name if plan is not None else ""
        details = self._serve_details() if self._deployed and not self._closed else None
        nodes = node_statuses(self._app_name or "", list(self._specs.values()), details)
        return AppStatus(graph=graph, backend=self.name, nodes=nodes)

    def scale(self, spec: DeploymentSpec, options: NodeOptions, *, wait_s: float) -> None:
        self._check_owner()
        with self._lock:
            self._specs[spec.name] = replace(self._specs[spec.name], options=options)
            self._pool_limits(spec.name)
            self._run_application()
        self._wait([spec.name], time.monotonic() + wait_s, what="scaled")

    def update(self, spec: DeploymentSpec, new: DeploymentSpec, *, wait_s: float) -> None:
        self._check_owner()
        old = self._specs[spec.name]
        with self._lock:
            self._specs[spec.name] = new
            self._pool_limits(spec.name)
            if new.inline:
                self._local[spec.name] = _LocalDeployment(new, self._pool)
                return
            new_code = replica_spec(old) != replica_spec(new)
            restart = new_code or _actor_options(old) != _actor_options(new)
            before = set(self._replica_ids(spec.name)) if restart else set()
            if new_code:
                self._versions[spec.name] += 1  # new code, constructor or batching: new replicas
            self._ingress_version += 1  # ingress replicas hold the plan: give them the new one
            self._run_application()
        self._wait([spec.name], time.monotonic() + wait_s, what="updated", replaced=before)

    def replicas(self, node: str) -> list[dict[str, Any]]:
        """The node's live replicas as Serve reports them (``replica_id``, ``state``, ``pid``,
        ``node_id``, ``actor_name`` ...), for diagnostics and tests."""
        from dagserve.backends.ray.status import live_replicas

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

    # -- Serve plumbing ------------------------------------------------------------------------
    def _check_owner(self) -> None:
        if self._attached:
            raise DeployError(
                f"This App only calls graph {self._app_name!r}, which another process deployed; scale and "
                "update it from the App that deployed it."
            )

    def _handle(self, name: str) -> Any:
        h = self._handles.get(name)
        if h is None:
            from ray.serve.handle import DeploymentHandle

            # A handle of our own rather than Serve's cached one: its router may live on the App's
            # loop, and we shut it down there (Serve's own teardown would try synchronously).
            h = DeploymentHandle(name, self._app_name)
            if self.pass_by_reference:
                # Ray's actor transport: a response handed to the next call travels as an object
                # reference, fetched by the next replica (by default Serve's gRPC transport
                # resolves it here and sends the value on, which is faster on one machine).
                h = h.options(_by_reference=True)
            self._handles[name] = h
        return h

    # -- direct transport ----------------------------------------------------------------------
    def _direct_pool(self, name: str) -> DirectPool | None:
        """The node's direct pool when its calls may skip Serve's router, else ``None``.

        Only for nodes with a fixed replica count (Serve's autoscaler counts the requests its own
        handles route), on a Ray of one machine (every replica is then local), once the pool has
        connected to a replica (until then, and whenever none accepts calls, Serve routes them).
        Runs on the App's event loop.
        """
        cluster = self._direct_cluster
        if cluster is None or self._closed:
            return None
        if time.monotonic() - self._direct_checked > _DIRECT_RECHECK_S:
            self._direct_checked = time.monotonic()  # a cluster may grow: look again, off the loop
            asyncio.get_running_loop().run_in_executor(None, self._check_direct)
        spec = self._specs[name]
        if not _direct_eligible(spec):
            return None
        pool = self._pools.get(name)
        if pool is None:
            if name in self._pools:
                return None  # no private socket directory (logged once)
            directory = socket_dir(cluster, self._app_name or "", name)
            if directory is None:
                self._pools[name] = None
                return None
            o = spec.options
            pool = DirectPool(
                directory,
                max_ongoing=o.effective_max_ongoing_requests,
                max_queued=o.max_queued_requests,
                loop=asyncio.get_running_loop(),
                limits=self.frame_limits,
            )
            self._pools[name] = pool
            return None  # it connects in the background; this call goes through Serve
        return pool if pool.usable else None

    def direct_options(self) -> dict[str, Any]:
        """The direct transport's settings, for a backend attached elsewhere (ingress replicas)."""
        return {
            "direct_max_frame_bytes": self.frame_limits.max_bytes,
            "direct_frame_timeout_s": self.frame_limits.timeout_s,
        }

    def direct_refusals(self) -> dict[str, int]:
        """Per node, the direct calls this process sent that a full replica refused (each went to
        another replica or waited in the queue; none failed): replicas shared with other callers."""
        return {name: pool.refusals for name, pool in self._pools.items() if pool is not None}

    def transport(self, node: str) -> str:
        """How calls to ``node`` travel now: ``"direct"`` (a Unix socket to a replica on this
        machine), ``"serve"`` (Serve's router and gRPC) or ``"inline"`` (in this process)."""
        spec = self._specs.get(node)
        if spec is None:
            raise KeyError(f"Graph {self._app_name!r} has no node {node!r}; nodes: {', '.join(self._specs)}")
        if spec.inline:
            return "inline"
        pool = self._pools.get(node)
        direct = self._direct_cluster is not None and _direct_eligible(spec) and pool is not None and pool.usable
        return "direct" if direct else "serve"

    def _pool_limits(self, name: str) -> None:
        """A node's queue bounds changed (scale, update): its direct pool holds to the new ones."""
        pool, loop = self._pools.get(name), self._loop
        if pool is None:
            return
        o = self._specs[name].options
        limits = (o.effective_max_ongoing_requests, o.max_queued_requests)
        if loop is not None and loop.is_running() and not _on_loop_thread(loop):
            loop.call_soon_threadsafe(pool.set_limits, *limits)
        else:
            pool.set_limits(*limits)

    def _check_direct(self) -> None:
        """Does the direct transport apply (asked of Ray: one machine, connected locally)?"""
        self._direct_checked = time.monotonic()
        if not self.direct_transport or os.environ.get(DIRECT_ENV, "1") == "0":
            self._direct_cluster = None
            return
        try:
            import ray

            if ray.util.client.ray.is_connected():
                self._direct_cluster = None  # Ray Client: this process is not on the cluster
                return
            alive = [n for n in ray.nodes() if n.get("Alive")]
            single = len(alive) == 1
            self._direct_cluster = ray.get_runtime_context().gcs_address if single else None
        except Exception as exc:  # noqa: BLE001 - without an answer, Serve routes every call
            log.warning("Direct transport off: asking Ray for its nodes failed (%s: %s)", type(exc).__name__, exc)
            self._direct_cluster = None

    def _close_pools(self) -> None:
        pools = [p for p in self._pools.values() if p is not None]
        self._pools = {}
        loop = self._loop
        if not pools or loop is None:
            return
        if loop.is_closed() or not loop.is_running():
            for pool in pools:
                pool.abandon()  # nothing runs that loop any more: just hang up
            return
        if _on_loop_thread(loop):
            for pool in pools:
                pool.close()
        else:
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile: nothing to close
                for pool in pools:
                    loop.call_soon_threadsafe(pool.close)

    def _close_handles(self) -> None:
        self._close_pools()
        handles, self._handles = list(self._handles.values()), {}
        if not handles:
            return
        if _router_in_own_loop():
            for h in handles:
                with contextlib.suppress(Exception):  # a router already gone needs no shutdown
                    h.shutdown()
            return
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return

        async def close() -> None:
            for h in handles:
                with contextlib.suppress(Exception):  # a router already gone needs no shutdown
                    await h.shutdown_async()

        if _on_loop_thread(loop):
            loop.create_task(close())  # cannot block our own loop; it finishes on its own
            return
        with contextlib.suppress(Exception):  # best effort: the routers die with the process anyway
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=5)

    def _run_application(self) -> None:
        """(Re)deploy the graph's Serve application; deployments whose version and options did not
        change keep their replicas."""
        from ray import serve

        remote = [s for s in self._specs.values() if not s.inline]
        if self.ingress_replicas is not None:
            root = self._bind_ingress([self._bind(s) for s in remote])
            route_prefix: str | None = f"/{self._app_name}"
        else:
            # The first node's deployment is the application's root; binding the others to it
            # makes Serve deploy them together (the replica ignores them).
            children = [self._bind(s) for s in remote[1:]]
            root = self._bind(remote[0], _children=children) if children else self._bind(remote[0])
            route_prefix = None
        target = serve.RunTarget(root, name=self._app_name, route_prefix=route_prefix, logging_config=_LOGGING)
        try:
            serve.run_many([target], wait_for_applications_running=False)
        except Exception as exc:
            raise DeployError(f"Ray Serve refused graph {self._app_name!r}: {type(exc).__name__}: {exc}") from exc

    def _bind_ingress(self, nodes: list[Any]) -> Any:
        """The ingress deployment, bound with every node deployment (so Serve deploys them together)."""
        from ray import serve

        from dagserve.backends.ray.proxy import INGRESS_DEPLOYMENT

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
        d = serve.deployment(
            replica_class,
            name=INGRESS_DEPLOYMENT,
            num_replicas=self.ingress_replicas,
            ray_actor_options={"num_cpus": 0},
            max_ongoing_requests=self.ingress_max_ongoing_requests,
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

        d = serve.deployment(NodeReplica, **deployment_options(spec, **self._serve_options))
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
        from dagserve.backends.ray.status import replica_ids

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
        from dagserve.backends.ray.status import problems

        delay = 0.05
        while True:
            ranges = {n: self._specs[n].options.replica_range() for n in names if n in self._specs}
            found = problems(
                self._serve_details(), self._app_name or "", names, replaced or set(), ranges, serving=serving
            )
            failed = {n: p for n, p in found.items() if p.startswith("failed")}
            if failed:
                raise DeployError(_describe(self._app_name, failed, what, final=True))
            if not found:
                return
            if time.monotonic() >= deadline:
                raise DeployError(_describe(self._app_name, found, what, final=False))
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
        if self._direct_cluster is not None and not _in_event_loop():
            # Straight from the replicas' sockets: right whichever transport the calls took.
            directory = socket_dir(self._direct_cluster, self._app_name or "", name)
            try:
                found = replica_stats(directory) if directory is not None else []
            except Exception:  # noqa: BLE001 - metrics are best effort
                found = []
            if found:
                return _sum_counts(found)
        # Only through a handle the requests already use: a handle made here, off the App's event
        # loop, would bind Serve's router to this thread (and requests would then use it).
        handle = self._handles.get(name)
        if handle is None:
            return {}  # no request reached the node through this App yet: no batches either
        try:
            response = handle.broadcast("dagserve_batch_counts")
            results = response.results(timeout_s=2.0)
        except Exception:  # noqa: BLE001 - metrics are best effort; a busy or gone replica gives none
            return {}
        return _sum_counts(results)


def _sum_counts(results: list[dict[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for counts in results:
        for size, n in counts.items():
            total[int(size)] = total.get(int(size), 0) + int(n)
    return total


_LOGGING = {"enable_access_log": False}
#: Set to "0" to send every call through Serve's router (same as ``direct_transport=False``).
DIRECT_ENV = "DAGSERVE_DIRECT_TRANSPORT"
#: The default of ``direct_max_frame_bytes`` (bytes per call's pickled arguments or result).
MAX_FRAME_ENV = "DAGSERVE_DIRECT_MAX_FRAME_BYTES"
#: How often the ingress asks Ray again whether it still runs on one machine.
_DIRECT_RECHECK_S = 10.0
#: How long deploy waits for an earlier application of the same name that is being deleted.
_DELETING_WAIT_S = 30.0


def _frame_limits(max_bytes: int | None, timeout_s: float) -> FrameLimits:
    """The direct transport's frame limits from the backend's options (or the environment)."""
    given: Any = max_bytes
    source = "direct_max_frame_bytes"
    if given is None:
        given = os.environ.get(MAX_FRAME_ENV, "").strip() or DEFAULT_MAX_FRAME_BYTES
        source = MAX_FRAME_ENV
        with contextlib.suppress(ValueError):
            given = int(given)
    if isinstance(given, bool) or not isinstance(given, int) or given < 1:
        raise DeployError(f"{source} must be a whole number of bytes >= 1, got {given!r}.")
    max_bytes = given
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise DeployError(f"direct_frame_timeout_s must be a number of seconds > 0, got {timeout_s!r}.")
    return FrameLimits(max_bytes, float(timeout_s))


def _router_in_own_loop() -> bool:
    """Does Serve run handle routers on a loop of their own (usable from any event loop)?"""
    from ray.serve._private import constants

    return bool(constants.RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP)


def _direct_eligible(spec: DeploymentSpec) -> bool:
    """Fixed replica counts only: Serve's autoscaler sees just the requests its handles route."""
    return spec.options.autoscaling is None and spec.options.num_replicas != "auto"


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _actor_options(spec: DeploymentSpec) -> dict[str, Any]:
    return deployment_options(spec)["ray_actor_options"]  # type: ignore[no-any-return]


def _describe(app: str | None, problems: dict[str, str], what: str, *, final: bool) -> str:
    if final:
        lines = "; ".join(f"node {name!r}: {why.removeprefix('failed: ')}" for name, why in problems.items())
        return f"Graph {app!r} could not be deployed on Ray: {lines}."
    lines = "; ".join(f"{name}: {why}" for name, why in problems.items())
    names = ", ".join(repr(n) for n in problems)
    return (
        f"Graph {app!r} was not {what} in time: node(s) {names} not ready ({lines}). Free or add the "
        "resources they wait for, lower their requests, or raise the wait (ready_timeout_s / wait_s)."
    )
