"""One request's scope: what every way into a graph enters, once, whatever the result's shape.

A request comes in by a *door*: ``App.call``/``acall``, ``App.stream``/``astream``, HTTP (JSON,
streams, files), ``App.map``, ``dagserve batch``, the Open Inference Protocol, gRPC, the OpenAI
routes, a queued job. Each builds a :class:`~dagserve.runtime.executor.RequestContext` (naming
itself in ``ctx.protocol``) and runs the graph through a :class:`RequestScope`, which:

* counts the request in flight on its owner (the App) from :meth:`RequestScope.begin` to
  :meth:`RequestScope.end`;
* sets the request's deadline for handle calls (``ctx.deadline``), its id for node code and log
  records (``dagserve.current_request_id``), its W3C trace context for log records, and the
  request handle calls carry, while its work runs (:meth:`RequestScope.active`);
* opens the request's span when traces are exported (the owner's ``tracing``);
* ends once, whether the request returned, streamed to its end, failed or was cancelled: the
  owner's observers (metrics, access records, span ends) get the context, the error or ``None``,
  and the seconds it took, measured with :func:`time.perf_counter` (uvloop's ``loop.time()``
  has millisecond resolution).

A stream is a request whose result is an iterator: :class:`~dagserve.runtime.streaming.StreamRun`
enters the same scope, begins it before the graph runs, makes it active around each step of the
stream, and ends it when the stream ends. There is no second envelope for streams.

Standard library only: importing it costs nothing.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from dagserve.runtime.handles import enter_request, leave_request
from dagserve.runtime.request_id import reset_request_id, set_request_id
from dagserve.runtime.tracing import reset_trace, set_trace

if TYPE_CHECKING:
    from dagserve.runtime.executor import RequestContext

__all__ = ["RequestObserver", "RequestScope", "RequestTracing", "ScopeOwner"]

#: Called once per request with (owner, context, error or ``None``, seconds).
RequestObserver = Callable[[Any, "RequestContext", "BaseException | None", float], None]


class RequestTracing(Protocol):
    """Opens a request's span as it starts (``observe/otel.py``); an observer ends it."""

    def begin(self, app: Any, ctx: RequestContext) -> None: ...


class ScopeOwner(Protocol):
    """What a scope reads and counts on: the App running the request."""

    in_flight: int
    observers: list[RequestObserver]
    tracing: RequestTracing | None

    @property
    def name(self) -> str:
        """The graph's name."""
        ...


class RequestScope:
    """One request from its start to its end (see the module's docstring).

    ``timeout_s`` is the request's time limit (``None``: none); it becomes ``ctx.deadline`` (a
    :func:`time.monotonic` value) unless the context already has one, so that handle calls made
    inside the request carry what is left of it.
    """

    __slots__ = ("_begun", "_ended", "ctx", "owner", "start")

    def __init__(self, owner: ScopeOwner, ctx: RequestContext, timeout_s: float | None) -> None:
        self.owner = owner
        self.ctx = ctx
        self.start = 0.0
        self._begun = False
        self._ended = False
        if timeout_s is not None and ctx.deadline is None:
            ctx.deadline = time.monotonic() + timeout_s
        if ctx.graph is None:
            ctx.graph = owner.name

    def begin(self) -> None:
        """The request starts: counted in flight, its span opened (traces exported only).

        Call it inside :meth:`active`, so that a new trace the tracer makes is the current one."""
        self._begun = True
        self.start = time.perf_counter()
        owner = self.owner
        owner.in_flight += 1
        if owner.tracing is not None:
            owner.tracing.begin(owner, self.ctx)

    def activate(self) -> tuple[contextvars.Token[Any], ...]:
        """Make this request current in this context (its id, trace and handle-call request);
        pass the tokens to :meth:`deactivate` in the same context."""
        ctx = self.ctx
        trace = ctx.trace
        return (
            set_request_id(ctx.request_id),
            set_trace(trace.traceparent if trace is not None else None),
            enter_request(ctx),
        )

    @staticmethod
    def deactivate(tokens: tuple[contextvars.Token[Any], ...]) -> None:
        rid, trace, request = tokens
        leave_request(request)
        reset_trace(trace)
        reset_request_id(rid)

    @contextmanager
    def active(self) -> Iterator[None]:
        """``with scope.active():`` the request is current in this context while the block runs."""
        tokens = self.activate()
        try:
            yield
        finally:
            self.deactivate(tokens)

    @property
    def elapsed(self) -> float:
        """Seconds since :meth:`begin`."""
        return time.perf_counter() - self.start

    def end(self, error: BaseException | None) -> None:
        """The request ended (``error``: why it failed, ``None`` if it did not); only the first
        call counts, and only after :meth:`begin`."""
        if self._ended or not self._begun:
            return
        self._ended = True
        owner = self.owner
        owner.in_flight -= 1
        observers = owner.observers
        if observers:
            seconds = time.perf_counter() - self.start
            for observe in observers:
                observe(owner, self.ctx, error, seconds)
