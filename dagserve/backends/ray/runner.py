"""The Ray backend's runner: how the executor's call steps reach the replicas.

A remote call goes over the direct transport (``direct/``) when its node's pool is usable, else
through a Serve handle; an ``inline`` node runs here. A call in flight is a :class:`_Pending`:
awaiting it gives the node's result with Ray's and Serve's errors turned into dagserve's typed
errors (lost replicas retried for ``retries=N`` nodes); handed whole to the next Serve call, it
goes as its ``DeploymentResponse`` and Serve resolves it in the next replica (``passthrough``).
Each call records its node's own time in the request's timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import TYPE_CHECKING, Any, Protocol

from dagserve._errors import AppClosedError, DagserveError, NodeError, OverloadedError, RequestTimeoutError
from dagserve.backends.ray.direct.pool import DirectCall, PoolClosed, ReplicaLost
from dagserve.backends.ray.direct_routing import direct_limits
from dagserve.backends.ray.transports import Transport
from dagserve.backends.ray.header import CallHeader
from dagserve.backends.ray.replica_caller import CallExtras
from dagserve.backends.ray.remote_streams import RayStream, read_streams
from dagserve.runtime.executor import node_timeout_error
from dagserve.runtime.handles import InProcessHandles
from dagserve.runtime.multiplex import MODEL_ID_KEY
from dagserve.runtime.replica_slots import QueueFull
from dagserve.runtime.tracing import call_traceparent

if TYPE_CHECKING:
    from dagserve.runtime.node_host import InProcessNode
    from dagserve.compiler.plan import DeploymentSpec, Step
    from dagserve.runtime.executor import RequestContext
    from dagserve.runtime.tracing import CallSpan

__all__ = ["CallTargets", "RayRunner"]

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
        "header",
        "kwargs",
        "model",
        "span",
        "spec",
        "step",
        "transport",
        "upstream",
    )

    def __init__(
        self,
        transport: Transport,
        spec: DeploymentSpec,
        step: Step,
        header: CallHeader,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ctx: RequestContext | None = None,
    ) -> None:
        self.ctx = ctx
        # The node call's span when traces are exported (the executor opened it just now).
        self.span: CallSpan | None = ctx.span.calling if ctx is not None and ctx.span is not None else None
        self.transport = transport
        self.spec = spec
        self.step = step
        self.header = header
        self.args = args
        self.kwargs = kwargs
        # A multiplexed node's model id: the direct pool and Serve's router send it to a holder.
        self.model: str | None = kwargs.get(MODEL_ID_KEY) if spec.multiplexed is not None else None
        self.upstream = [a for a in (*args, *kwargs.values()) if isinstance(a, _Pending)]
        self._response: Any = None
        self._dispatch: asyncio.Future[Any] | None = None
        self._task: asyncio.Future[Any] | None = None
        self._sent: float | None = None  # time.perf_counter() values
        self._finished: float | None = None
        self._watched = False
        # A node with timeout_s gets its inputs as values, so its replica starts on the call only
        # once they are ready; its clock starts then too (_result), as on the local backend.
        # A direct call sends values: a Serve response cannot travel over its socket.
        self._wants_values = spec.options.timeout_s is not None or not transport.takes_responses
        if all(u.passable for u in self.upstream) and not (self.upstream and self._wants_values):
            self._response = self._send(args, kwargs)
        else:
            self._dispatch = asyncio.ensure_future(self._send_later())

    @property
    def passable(self) -> bool:
        """May this call's response go whole to the next call (no check needed here first)?"""
        o = self.spec.options
        return self._response is not None and self.transport.takes_responses and not o.retries and o.timeout_s is None

    # -- sending -------------------------------------------------------------------------------
    def _send(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._sent is None:  # a retry is part of the node's time
            self._sent = time.perf_counter()
        if not self.transport.takes_responses:
            # Upstream calls were awaited before the first send (a retry finds them finished).
            args = tuple(_value(a) for a in args)
            if kwargs:
                kwargs = {k: _value(v) for k, v in kwargs.items()}
        else:
            args = tuple(_whole(a) for a in args)
            if kwargs:
                kwargs = {k: _whole(v) for k, v in kwargs.items()}
        return self.transport.call(self.header, args, kwargs, model=self.model)

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
            if not a.transport.takes_responses or o.retries or o.timeout_s is not None or self._wants_values:
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
        # A node's timeout_s is applied here alone (the executor leaves a passthrough runner's
        # remote calls to it), from when the call is sent, whoever awaits it.
        timeout = self.spec.options.timeout_s
        try:
            if timeout is None:
                return await self._receive()
            # The node's clock starts when the call is sent: its inputs (upstream calls it takes
            # as values) are ready then, as on the local backend.
            try:
                await self.response()
            except asyncio.CancelledError:
                self._blame_upstream()
                self.cancel()
                raise
            try:
                async with asyncio.timeout(timeout):
                    return await self._receive()
            except TimeoutError as exc:
                if isinstance(exc, RequestTimeoutError):
                    raise
                raise node_timeout_error(self.step.name, timeout) from None
        except BaseException as exc:
            if self.span is not None:
                self.span.end(exc)
            raise
        finally:
            self._finished = time.perf_counter()
            if self.ctx is not None:
                # A call through a handle (a step of no plan: index -1) is timed by its caller
                # (RunnerCaller, in ctx.handle_timings), not among the graph's steps.
                self._record(self.ctx.timings if self.step.index >= 0 else {})

    def _record(self, timings: dict[str, float]) -> None:
        """Put this call's own time in ``timings``, then that of the calls it took whole that
        nobody awaited here (their time is known only now)."""
        if self._sent is None or self._finished is None:
            return  # never sent (an input failed) or not finished: the executor's time stands
        ready = max([self._sent, *(u._finished for u in self.upstream if u._finished is not None)])
        timings[self.step.name] = max(0.0, self._finished - ready)
        if self.span is not None:  # (a failed call's span has ended already, with its error)
            self.span.end(None, self._finished)
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
            if self.span is not None:
                self.span.set("dagserve.retries", attempt)
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


class CallTargets(Protocol):
    """What the runner needs of the backend (:class:`~.backend.RayBackend`): where calls go."""

    _specs: dict[str, DeploymentSpec]
    _local: dict[str, InProcessNode]

    def _transport(self, name: str) -> Transport: ...


class RayRunner:
    """Performs call steps: remote ones over the direct transport or Serve handles, inline ones here."""

    passthrough = True

    def __init__(self, backend: CallTargets) -> None:
        self._backend = backend
        self._extras = CallExtras()  # what calls to and with handles carry (handles.py)
        #: Handles for inline nodes, calling through this runner (set by RayBackend).
        self.handles: InProcessHandles | None = None
        #: Call steps that read a stream (set at deploy: runtime.streaming.stream_readers).
        self.reads_streams: frozenset[int] = frozenset()

    def call(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: RequestContext) -> Any:
        if step.index in self.reads_streams:
            return read_streams(step, args, kwargs, lambda a, k: self._call(step, a, k, ctx))
        return self._call(step, args, kwargs, ctx)

    def _call(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: RequestContext) -> Any:
        name: str = step.deployment  # type: ignore[assignment]
        b = self._backend
        if step.inline:
            holds = False
            if self.handles is not None:
                args, kwargs, holds = self.handles.call_args(step, args, kwargs)
            return b._local[name].call(step.method, args, kwargs, None, holds)  # type: ignore[arg-type]
        header = CallHeader(
            step.method or "__call__",
            step.name,
            ctx.request_id,
            call_traceparent(ctx),
            self._extras(step, b._specs[name], ctx),
        )
        return _Pending(b._transport(name), b._specs[name], step, header, args, kwargs, ctx)

    def stream(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: RequestContext) -> Any:
        """A generator node's items (opened on the first read, over the transport chosen then;
        inline ones here)."""
        name: str = step.deployment  # type: ignore[assignment]
        if step.inline:
            return self._backend._local[name].stream(step.method, args, kwargs)  # type: ignore[arg-type]
        header = CallHeader(step.method or "__call__", step.name, ctx.request_id, call_traceparent(ctx))
        b = self._backend
        return RayStream(functools.partial(b._transport, name), name, header, args, kwargs, direct_limits(b._specs[name]))
