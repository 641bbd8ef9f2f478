"""What a request's trace context is to the runtime and the backends: data and protocols only.

A request served over HTTP carries a W3C trace context (:class:`W3CTrace`: the caller's trace id,
or a new one, and this request's own span id), parsed by :mod:`dagserve.observe.traceparent`.
It travels with every node call to the replicas (on Ray, in the call's header) and sits in a
context variable that log filters read (:func:`current_trace_id`).

Spans are made above this layer (:mod:`dagserve.observe.otel`, only when traces are exported):
the request's span is ``RequestContext.span`` (a :class:`RequestSpan`), from which the executor
opens one :class:`CallSpan` per node call; a Ray replica opens its own child span through a
:class:`ReplicaSpans` it gets from the ``replica_spans`` hook (``dagserve/_hooks.py``). With
export off, ``RequestContext.span`` is ``None`` and none of this runs.

Standard library only: importing it costs nothing.
"""

from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dagserve.compiler.plan import Step

__all__ = [
    "OTLP_ENDPOINT_ENV",
    "CallSpan",
    "ReplicaSpans",
    "RequestSpan",
    "W3CTrace",
    "call_traceparent",
    "current_trace_id",
    "otlp_endpoint",
    "reset_trace",
    "set_trace",
]

#: dagserve's own variable naming the OTLP/HTTP endpoint traces go to (before OpenTelemetry's).
OTLP_ENDPOINT_ENV = "DAGSERVE_OTLP_ENDPOINT"
_OTEL_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"


def otlp_endpoint() -> str | None:
    """Where traces are exported: ``$DAGSERVE_OTLP_ENDPOINT``, else ``$OTEL_EXPORTER_OTLP_ENDPOINT``,
    else ``None`` (export off)."""
    return os.environ.get(OTLP_ENDPOINT_ENV) or os.environ.get(_OTEL_ENDPOINT_ENV) or None


@dataclass(slots=True)
class W3CTrace:
    """One request's W3C trace context: the trace it belongs to and its own span.

    ``trace_id`` (32 hex) is the caller's or a new one; ``span_id`` (16 hex) is this request's
    (its span's id when traces are exported); ``parent_id`` the caller's span, ``None`` when no
    valid ``traceparent`` came; ``flags`` the two hex digits of trace flags; ``tracestate`` the
    caller's, passed on as it came.
    """

    trace_id: str
    span_id: str
    flags: str = "03"
    parent_id: str | None = None
    tracestate: str | None = None

    @property
    def traceparent(self) -> str:
        """This request's ``traceparent`` header value (version 00)."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


class CallSpan(Protocol):
    """The span of one node call, made by the tracer (observe/otel.py)."""

    #: What the call carries to the replica: the W3C ``traceparent`` naming this span.
    traceparent: str

    def set(self, key: str, value: Any) -> None:
        """Set one attribute (e.g. ``dagserve.retries``)."""

    def end(self, error: BaseException | None = None, finished: float | None = None) -> None:
        """End the span (first call wins): ``error`` the call's failure, ``finished`` a
        ``time.perf_counter()`` value when the call ended earlier than now."""

    def activate(self) -> Any:
        """Make this span the current OpenTelemetry span in this context, so that spans the
        node's own code opens nest under it; returns a token for :meth:`deactivate`."""

    def deactivate(self, token: Any) -> None:
        """Undo :meth:`activate` (in the same context)."""


class RequestSpan(Protocol):
    """The span of one request; the executor opens the node calls' spans from it."""

    #: The call span opened last: a runner's ``call()``, which the executor calls right after
    #: opening it (no await in between), reads it to send its ``traceparent`` with the call.
    calling: CallSpan | None

    def call(self, step: Step) -> CallSpan:
        """Open the span of a call of ``step`` (ended by the executor or, for a call handed on
        un-awaited, by the runner; whatever is left open ends with the request)."""


class ReplicaSpans(Protocol):
    """Replica-side spans (a Ray replica's process): one per call, a child of the call's span."""

    def start(self, step: str, traceparent: str) -> Any:
        """A started span for a call of ``step`` whose ``traceparent`` came with it."""

    def activate(self, span: Any) -> Any:
        """Make ``span`` current in OpenTelemetry's context (the node's own spans nest under it)."""

    def deactivate(self, token: Any) -> None:
        """Undo :meth:`activate`."""

    def end(self, span: Any, error: BaseException | None, batch_size: int | None) -> None:
        """End a span :meth:`start` gave."""


def call_traceparent(ctx: Any) -> str | None:
    """The ``traceparent`` a node call being made now carries: its span's when traces are
    exported, else the request's (for the trace id in the replica's logs), else ``None``.
    ``ctx`` is the :class:`~dagserve.RequestContext` (not imported: the executor imports this module)."""
    span = ctx.span
    if span is not None and span.calling is not None:
        return span.calling.traceparent
    trace = ctx.trace
    return trace.traceparent if trace is not None else None


_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("dagserve_traceparent", default=None)


def current_trace_id() -> str | None:
    """The trace id (32 hex) of the request being served in this context, if it has one."""
    value = _current.get()
    return value[3:35] if value is not None else None


def current_traceparent() -> str | None:
    """The ``traceparent`` of the request being served in this context (a handle call carries it on)."""
    return _current.get()


def set_trace(traceparent: str | None) -> contextvars.Token[str | None]:
    """Make ``traceparent`` (version 00) current; pass the token to :func:`reset_trace` to undo."""
    return _current.set(traceparent)


def reset_trace(token: contextvars.Token[str | None]) -> None:
    """Undo :func:`set_trace`."""
    _current.reset(token)
