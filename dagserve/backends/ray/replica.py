"""What runs inside each Ray Serve replica: one wrapper class for every node.

:class:`NodeReplica` is the Serve deployment class of every plan deployment. It builds the
user's model class once per replica (or holds the function), runs sync node code where
:class:`~dagserve.runtime.sync_calls.SyncCalls` says (a thread pool, or inline on the replica's
event loop once proven fast, so a slow call never blocks the loop) and async code on that loop, batches with
dagserve's :class:`~dagserve.runtime.batching.Batcher` (one queue per called method), forwards a
user-defined ``check_health`` to Serve, and turns a failure into :class:`~dagserve.NodeError` naming the step, so the name
survives the trip back through Ray. It also serves the direct transport's calls (``direct/``:
on a Unix socket, and over TCP for callers on other Ray nodes when the cluster has token
authentication), holding them and the calls Serve routes to one ``max_ongoing_requests``, and
stops taking them as soon as Serve begins to stop the replica.

This module is imported by Ray worker processes when they unpickle the deployment; it imports
ray lazily, and only what a replica needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from dagserve._errors import DagserveError, DeployError
from dagserve._hooks import hooks
from dagserve.backends.ray.direct.directory import socket_dir
from dagserve.backends.ray.direct.frames import FrameLimits
from dagserve.backends.ray.direct.replica_server import ReplicaServer
from dagserve.backends.ray.direct_routing import DirectRouting, announce, cross_node_listener, withdraw
from dagserve.backends.ray.header import CallHeader
from dagserve.backends.ray.replica_models import ReplicaModels
from dagserve.backends.ray.replica_caller import ReplicaCaller, enter_call
from dagserve.backends.ray.remote_streams import replica_stream, resolve_sources
from dagserve.runtime.failures import blame, node_failure
from dagserve.runtime.handles import leave_request, resolve_handles
from dagserve.runtime.heap import settle_heap
from dagserve.runtime.node_host import NodeCode, NodeHost
from dagserve.runtime.request_id import reset_request_id, set_request_id
from dagserve.runtime.sync_calls import Mode
from dagserve.runtime.tracing import ReplicaSpans, reset_trace, set_trace

log = logging.getLogger("dagserve.ray")

__all__ = ["LOOPBACK_ENV", "Header", "NodeReplica", "ReplicaSpec", "TargetRef", "ship"]

#: Set (to "1") in the environment of a Ray instance dagserve starts on loopback only; replicas
#: then bind Serve's inter-deployment gRPC server to 127.0.0.1 instead of every interface.
LOOPBACK_ENV = "DAGSERVE_RAY_LOOPBACK"

#: What travels with every call: (method, step name, request id, W3C traceparent or None[, extras
#: for handles: backends/ray/replica_caller.py]).
Header = CallHeader

# Upper bound on threads for sync node code per replica; threads start only when needed.
_MAX_THREADS = 64


@dataclass(frozen=True)
class TargetRef:
    """Where a node's function or class lives, to import it in the replica.

    Importing beats pickling the code by value: a function pickled by value drags along the
    module globals it uses, which fails for locks, clients and the like (and a decorated node
    cannot be pickled by reference: its module attribute is the dagserve wrapper). ``fallback``
    is the target itself when it also pickles by value (Ray then sends it along), for a replica
    that cannot import the module; ``None`` when it does not.
    """

    module: str
    qualname: str
    fallback: Any = field(default=None, compare=False, repr=False)

    def resolve(self, node: str) -> Any:
        try:
            obj: Any = importlib.import_module(self.module)
            for part in self.qualname.split("."):
                obj = getattr(obj, part)
            return _unwrap(obj)
        except (ImportError, AttributeError) as exc:
            if self.fallback is not None:
                return self.fallback
            raise DeployError(
                f"Node {node!r} failed to start: the replica cannot import {self.module}.{self.qualname} "
                f"({type(exc).__name__}: {exc}), and its code cannot be sent by value. Make the module "
                "importable on every Ray node (install it, or deploy with a runtime_env working_dir)."
            ) from exc


def ship(target: Any) -> Any:
    """What to send to replicas for ``target``: a :class:`TargetRef` when it can be imported by name
    (in this process, from a module other than ``__main__``), else the object itself (pickled by value)."""
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<locals>" in qualname:
        return target
    obj: Any = sys.modules.get(module)
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        return target
    if _unwrap(obj) is not target:
        return target
    return TargetRef(module, qualname, target if _pickles_by_value(target) else None)


def _pickles_by_value(target: Any) -> bool:
    from ray import cloudpickle

    try:
        cloudpickle.dumps(target)
    except Exception:  # noqa: BLE001 - anything that stops pickling means "no"
        return False
    return True


def _unwrap(obj: Any) -> Any:
    """The user function or class behind a dagserve node wrapper (``fn`` / ``cls``)."""
    from dagserve.graph import FunctionNode, ModelClass

    if isinstance(obj, FunctionNode):
        return obj.fn
    if isinstance(obj, ModelClass):
        return obj.cls
    return obj


@dataclass(frozen=True)
class ReplicaSpec(NodeCode):
    """What a replica needs: the node's code (:class:`~dagserve.runtime.node_host.NodeCode`, no
    graph objects) and how the replica serves it."""

    #: Also serve calls over a Unix socket for an ingress on this machine (``direct/``).
    direct: bool = True
    #: What the direct transport reads and sends per call (the ingress holds to the same).
    frames: FrameLimits = field(default_factory=FrameLimits)
    #: Where the replica exports its spans (OTLP/HTTP), ``None``: no spans (runtime/tracing.py).
    otlp_endpoint: str | None = None


class NodeReplica:
    """The Serve deployment class behind every remote node.

    Serve calls ``__call__(header, *args, **kwargs)``; ``header`` is a
    :class:`~dagserve.backends.ray.header.CallHeader`. Extra constructor keywords (the handles Serve passes to an application's
    root deployment) are ignored.
    """

    def __init__(self, spec: ReplicaSpec, **_children: Any) -> None:
        _bind_grpc_to_loopback()
        if isinstance(spec.target, TargetRef):
            spec = replace(spec, target=spec.target.resolve(spec.name))
        self._spec = spec
        self._name = spec.name
        # Threads start only as sync calls need them; the bound keeps a burst from making hundreds.
        self._pool = ThreadPoolExecutor(max_workers=_MAX_THREADS, thread_name_prefix=f"dagserve-{spec.name}")
        # Direct pools of its own: for the streams it reads from other nodes' replicas (streams.py)
        # and the calls its code makes through handles (handles.py), as the ingress's calls go.
        self._peers: DirectRouting | None = DirectRouting(True, spec.frames) if spec.direct else None
        # The deployments this node calls from its code, over the transport chosen per call.
        self._caller = ReplicaCaller(self._peers)
        with contextlib.suppress(RuntimeError):
            self._caller.bind(asyncio.get_running_loop())
        # The node's code, instance and batchers: the one node host every backend wraps. Batching
        # is dagserve's own batcher, not ``serve.batch``: Serve 2.60 forms the next batch as soon
        # as its wait ends, even while the previous batch still holds the model, so under load
        # batches stay at (arrival rate x wait) items instead of growing to max_batch_size. Ours
        # forms a batch only when the previous one has finished (docs/ray.md#batching).
        self._host = NodeHost(
            spec, self._pool, resolve_init=lambda args, kwargs: resolve_handles((args, kwargs), self._caller.make)
        )
        instance = self._host.instance
        # A multiplexed node's models: reported to its callers and to Serve's router (replica_models.py).
        self._models = ReplicaModels(instance, spec.multiplexed) if spec.multiplexed else None
        user_check = getattr(instance, "check_health", None) if instance is not None else None
        self._user_check = user_check if callable(user_check) else None
        self._direct: ReplicaServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        if spec.otlp_endpoint:
            self._trace_calls(spec.otlp_endpoint)
        if spec.direct:
            self._start_direct()
        settle_heap()  # the model is loaded: no GC scans of what the replica holds for good

    def _start_direct(self) -> None:
        """Listen on this replica's Unix socket for an ingress on this machine (``direct/``)."""
        try:
            loop = asyncio.get_running_loop()  # Serve builds replicas on their event loop
            import ray
            from ray import serve

            ctx = serve.get_replica_context()
            runtime = ray.get_runtime_context()
            node_id = runtime.get_node_id()
            directory = socket_dir(runtime.gcs_address, ctx.app_name, ctx.deployment, node_id)
            limit = _serve_max_ongoing()
            key, host = cross_node_listener(self._name)
        except Exception as exc:  # noqa: BLE001 - without it, calls go through Serve as before
            log.warning("Node %r: direct transport off (%s: %s)", self._name, type(exc).__name__, exc)
            return
        if directory is None:
            return
        server = ReplicaServer(
            os.path.join(directory, ctx.replica_id.unique_id + ".sock"),
            self._run,
            self.dagserve_batch_counts,
            limit=limit,
            limits=self._spec.frames,
            stream=self._stream,
            tcp_host=host,
            auth_key=key,
            handle_calls=self._caller.stats.snapshot,
        )
        entry = (ctx.app_name, ctx.deployment, ctx.replica_id.unique_id, node_id)
        self._announced: tuple[str, str, str, str] | None = None
        self._loop = loop
        _tell_replica_when_serve_stops_it()

        async def start() -> None:
            if self._stopping:
                return  # Serve began stopping this replica before it listened
            try:
                await server.start()
            except OSError as exc:
                log.warning("Node %r: direct transport off, cannot listen on %s (%s)", self._name, server.path, exc)
                return
            self._direct = server
            if self._models is not None:  # callers learn the models it holds (replica_models.py)
                self._models.server = server
                self._models.announce()
            if self._stopping:
                server.stop_accepting()
            elif server.tcp_address is not None:  # callers on other Ray nodes find it in Ray's KV store
                await loop.run_in_executor(None, announce, *entry, server.tcp_address)
                self._announced = entry

        loop.create_task(start())
        if self._peers is not None:
            loop.run_in_executor(None, self._peers.check)  # asks Ray for its nodes: off the loop

    def _dagserve_stopping(self) -> None:
        """Serve began stopping this replica (called on Serve's own loop, see
        :func:`_tell_replica_when_serve_stops_it`): refuse new direct calls now, finish the held ones."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._stop_accepting)

    def _stop_accepting(self) -> None:
        self._stopping = True
        if self._direct is not None:
            self._direct.stop_accepting()
        announced, self._announced = getattr(self, "_announced", None), None
        if announced is not None:
            asyncio.get_running_loop().run_in_executor(None, withdraw, *announced[:3])

    # -- serving -------------------------------------------------------------------------------
    async def __call__(self, header: Header, *args: Any, **kwargs: Any) -> Any:
        """A call Serve routed here: it shares ``max_ongoing_requests`` with the direct calls."""
        direct = self._direct
        if direct is None:
            return await self._run(header, args, kwargs)
        await direct.admit()
        try:
            return await self._run(header, args, kwargs)
        finally:
            direct.release()

    async def dagserve_stream(self, header: Header, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """A generator node's call (Serve streaming handle, backends/ray/remote_streams.py): its items."""
        direct = self._direct
        if direct is not None:
            await direct.admit()
        try:
            async for item in self._stream(header, args, kwargs):
                yield item
        finally:
            if direct is not None:
                direct.release()

    def _stream(self, header: Header, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """A generator node's items, however the call came (Serve, or the direct transport)."""
        return replica_stream(self._host, header, args, kwargs, self._peers)

    async def _run(self, header: Header, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one call, however it came (Serve, or the direct transport)."""
        method, step, request_id, traceparent, _ = header
        args, kwargs = resolve_sources(args, kwargs, self._peers)  # streams it reads (backends/ray/remote_streams.py)
        token = set_request_id(request_id)  # node code and log records see the request's id
        trace_token = set_trace(traceparent)
        args, kwargs, request = enter_call(header, args, kwargs, self._caller)  # handles, deadline
        kwargs, model = self._host.take_model(kwargs)  # a multiplexed node's model id (runtime/multiplex.py)
        try:
            return await self._host.call(method, args, kwargs, handles=header.with_handles, model=model)
        except DagserveError as exc:
            raise blame(exc, step)  # an HTTPError the node raised names it
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # sys.exit() in a node fails one request
            raise node_failure(step, exc) from exc  # a NodeError, or the HTTP status the node chose
        finally:
            if request is not None:
                leave_request(request)
            reset_trace(trace_token)
            reset_request_id(token)

    def _trace_calls(self, endpoint: str) -> None:
        """Open a span per call, a child of the call's span in the ingress (observe/otel.py)."""
        try:
            from ray import serve

            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside Serve (tests): the node's name will do
            replica = self._name
        spans: ReplicaSpans = hooks.need("replica_spans")(endpoint, replica)
        run = self._run

        async def traced(header: Header, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            traceparent = header.traceparent
            if not traceparent:
                return await run(header, args, kwargs)
            span = spans.start(header.step, traceparent)
            current = spans.activate(span)  # the node's own spans nest under the replica's
            error: BaseException | None = None
            try:
                return await run(header, args, kwargs)
            except BaseException as exc:
                error = exc
                raise
            finally:
                spans.deactivate(current)
                # The batch this call was in has just finished: still the batcher's last one.
                spans.end(span, error, self._host.last_batch_size(header.method))

        self._run = traced  # type: ignore[method-assign]

    # -- what Serve and the backend ask of a replica -------------------------------------------
    async def check_health(self) -> None:
        """Serve's periodic health check: the user's ``check_health`` when the model defines one."""
        check = self._user_check
        if check is None:
            return
        if inspect.iscoroutinefunction(check):
            await check()
        else:
            await asyncio.get_running_loop().run_in_executor(self._pool, check)

    def dagserve_batch_counts(self) -> dict[int, int]:
        """How many batches of each size this replica ran (read by ``Backend.batch_sizes``)."""
        return dict(self._host.batch_counts)

    def dagserve_handle_calls(self) -> list[list[Any]]:
        """The calls this replica's node made through handles (``CallStats.snapshot``), for
        ``Backend.handle_calls`` when the direct transport is off."""
        return self._caller.stats.snapshot()

    def dagserve_models(self) -> dict[str, Any] | None:
        """A multiplexed node's models: held ids and counters (``ModelCache.report()``), else ``None``."""
        return self._models.report() if self._models is not None else None

    def dagserve_sync_modes(self) -> dict[str, Mode]:
        """Where each sync method called so far runs next: probing, inline or threads (tests, diagnostics)."""
        return self._host.sync.modes()

    def dagserve_replica_info(self) -> dict[str, Any]:
        """Where this replica runs: its process id and Ray node id; ``direct_peers``: per node it
        reaches over the direct transport (the streams it reads, the calls its code makes through
        handles), its connected replicas by transport;
        ``gc_frozen``: objects its start-up froze out of GC scans (runtime/heap.py). For tests and
        diagnostics."""
        import gc

        import ray

        pools = self._peers.pools if self._peers is not None else {}
        peers = {name: pool.transports() for name, pool in pools.items() if pool is not None and pool.usable}
        node = ray.get_runtime_context().get_node_id()
        return {"pid": os.getpid(), "node_id": node, "direct_peers": peers, "gc_frozen": gc.get_freeze_count()}

    def __del__(self) -> Any:
        """The end of Serve's graceful shutdown: finish the direct calls held (new ones have been
        refused since the shutdown began, ``_dagserve_stopping``), then close.

        Serve awaits what ``__del__`` returns when it is a coroutine (it also accepts ``async def
        __del__``, which garbage collection could not run): the drain is returned only while the
        server is not closed and this thread runs the replica's loop, so a plain ``del`` never gets one.
        """
        direct = getattr(self, "_direct", None)
        if direct is not None and not direct.closed:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                direct.abort()  # not on the replica's loop (garbage collection): close at once
            else:
                return self._drain()
        self._release_threads()
        return None

    async def _drain(self) -> None:
        direct = self._direct
        if direct is not None:
            await direct.drain()
        if self._peers is not None:
            self._peers.close(asyncio.get_running_loop())
        self._release_threads()

    def _release_threads(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _serve_max_ongoing() -> Callable[[], int]:
    """The replica's ``max_ongoing_requests`` as Serve holds it now (``app.update`` changes it in
    place, without a new replica), read from Serve's replica context."""
    from ray.serve import context

    def limit() -> int:
        return int(context._get_internal_replica_context()._deployment_config.max_ongoing_requests)

    limit()  # fails here (direct transport off, logged) on a Serve without that context
    return limit


def _tell_replica_when_serve_stops_it() -> None:
    """Make Serve call ``NodeReplica._dagserve_stopping`` as soon as it begins stopping a replica.

    Serve 2.60 calls the user class's ``__del__`` only at the end of its graceful shutdown, after
    waiting for its own requests (at least ``graceful_shutdown_wait_loop_s``); until then the
    replica would take direct calls that Serve, which stopped routing to it, does not wait for.
    ``Replica.perform_graceful_shutdown`` (what the controller calls) is wrapped once per process;
    on a Serve without it, ``__del__`` alone stops the direct transport, as before.
    """
    try:
        from ray.serve._private.replica import Replica
    except ImportError:  # pragma: no cover - a Serve without that module
        Replica = None
    original = getattr(Replica, "perform_graceful_shutdown", None)
    if original is None:  # pragma: no cover - ray is pinned to a version that has it
        logging.getLogger("dagserve.ray").warning(
            "This Ray Serve has no Replica.perform_graceful_shutdown: a stopping replica takes direct calls "
            "until Serve deletes it (the ingress retries them elsewhere); pin ray to the version dagserve names."
        )
        return
    if getattr(original, "_dagserve_hook", False):
        return

    @functools.wraps(original)
    async def perform_graceful_shutdown(self: Any, *args: Any, **kwargs: Any) -> Any:
        wrapper = getattr(self, "_user_callable_wrapper", None)
        stopping = getattr(getattr(wrapper, "user_callable", None), "_dagserve_stopping", None)
        if callable(stopping):
            with contextlib.suppress(Exception):  # never in the way of Serve's own shutdown
                stopping()
        return await original(self, *args, **kwargs)

    perform_graceful_shutdown._dagserve_hook = True  # type: ignore[attr-defined]
    Replica.perform_graceful_shutdown = perform_graceful_shutdown  # type: ignore[method-assign]


def _bind_grpc_to_loopback() -> None:
    """Make Serve's inter-deployment gRPC server listen on 127.0.0.1 on a loopback-only Ray.

    Serve 2.60 binds it to ``[::]:0`` (every interface) unconditionally. On a Ray instance that
    dagserve started on loopback every peer is local, so nothing needs to reach it from outside.
    The replica starts that server after constructing this class, so patching here is in time.
    """
    if os.environ.get(LOOPBACK_ENV) != "1":
        return
    try:
        from ray.serve._private import replica as serve_replica
    except ImportError:  # pragma: no cover - a Serve without that module has no such server
        return
    original = getattr(serve_replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_dagserve_loopback", False):
        return

    def add_port(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return original(server, address)

    add_port._dagserve_loopback = True  # type: ignore[attr-defined]
    serve_replica.add_port_to_grpc_server = add_port
