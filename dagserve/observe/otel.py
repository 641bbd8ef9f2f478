"""OpenTelemetry traces of requests: one span per request, one per node call, and on Ray one per
call inside the replica, joined into the request's trace.

Off by default, and free when off: nothing here imports the OpenTelemetry SDK until traces are
turned on, and requests of an App without a tracer make no span objects. On::

    from dagserve.observe.otel import Tracing

    tracing = Tracing(endpoint="http://127.0.0.1:4318")     # OTLP/HTTP; or exporter=...
    tracing.install(app)                                     # every request of app is traced

``dagserve run --otlp-endpoint URL`` (or ``$DAGSERVE_OTLP_ENDPOINT``, or OpenTelemetry's
``$OTEL_EXPORTER_OTLP_ENDPOINT``) does that for every graph it serves. On the Ray backend the
replicas export their own spans to the endpoint named in the environment when the graph was
deployed (:func:`dagserve.runtime.tracing.otlp_endpoint`, carried in each replica's spec).

Spans (names and attributes):

* ``request <graph>`` (SERVER): ``dagserve.graph``, ``dagserve.request_id``, ``dagserve.outcome``;
  a child of the caller's span when a valid ``traceparent`` came, with the ids the ingress
  answered with in its ``traceparent`` header;
* ``node <step>`` (CLIENT), a child of the request's: ``dagserve.node``, ``dagserve.outcome``,
  ``dagserve.retries`` and, on the local backend, ``dagserve.replica``, ``dagserve.batch_size``;
* ``replica <step>`` (SERVER, Ray replicas), a child of the node call's: ``dagserve.node``,
  ``dagserve.replica``, ``dagserve.batch_size``, ``dagserve.outcome``.

Exporting over OTLP needs ``opentelemetry-exporter-otlp-proto-http``: ``pip install 'dagserve[otel]'``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from dagserve._errors import OptionsError
from dagserve.observe.server_timing import outcome_of
from dagserve.observe.traceparent import request_trace
from dagserve.runtime.tracing import set_trace

if TYPE_CHECKING:
    from dagserve.app import App
    from dagserve.compiler.plan import Step
    from dagserve.runtime.executor import RequestContext

__all__ = ["Tracing", "otlp_exporter", "replica_spans"]

_INSTRUMENTATION = "dagserve"

logger = logging.getLogger("dagserve.otel")


def otlp_exporter(endpoint: str) -> Any:
    """An OTLP/HTTP span exporter sending to ``endpoint`` (``http://host:4318``; ``/v1/traces`` is
    added unless the URL already names it)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise OptionsError(
            "Exporting traces over OTLP needs the package opentelemetry-exporter-otlp-proto-http: "
            "pip install 'dagserve[otel]' (or unset --otlp-endpoint / $DAGSERVE_OTLP_ENDPOINT / "
            "$OTEL_EXPORTER_OTLP_ENDPOINT)."
        ) from None
    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    return OTLPSpanExporter(endpoint=url)


def _provider(exporter: Any, batch: bool, service_name: str) -> tuple[Any, Any]:
    """(a TracerProvider exporting to ``exporter``, its id generator), dagserve's own (not global)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class _Ids(RandomIdGenerator):
        """Random ids, except for a request's span: the ids the ingress already answered with."""

        def __init__(self) -> None:
            self.forced = threading.local()

        def generate_trace_id(self) -> int:
            value = getattr(self.forced, "trace_id", None)
            return value if value is not None else super().generate_trace_id()

        def generate_span_id(self) -> int:
            value = getattr(self.forced, "span_id", None)
            return value if value is not None else super().generate_span_id()

    ids = _Ids()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), id_generator=ids)
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return provider, ids


class Tracing:
    """Traces of the requests of the Apps it is installed on, exported to ``exporter`` (any
    OpenTelemetry ``SpanExporter``, e.g. the SDK's ``InMemorySpanExporter`` in tests) or over
    OTLP/HTTP to ``endpoint``. ``batch`` (default: on for OTLP, off for an exporter given) sends
    spans from a background thread in batches instead of one by one as they end."""

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        exporter: Any = None,
        batch: bool | None = None,
        service_name: str = "dagserve",
    ) -> None:
        if (endpoint is None) == (exporter is None):
            raise OptionsError("Tracing needs either endpoint= (an OTLP/HTTP URL) or exporter=, not both.")
        from opentelemetry import trace as api

        self._api = api
        if exporter is None:
            exporter = otlp_exporter(endpoint)  # type: ignore[arg-type]
            batch = True if batch is None else batch
        self.provider, self._ids = _provider(exporter, bool(batch), service_name)
        self.tracer = self.provider.get_tracer(_INSTRUMENTATION)

    def install(self, app: App) -> None:
        """Trace every request of ``app`` from now on (idempotent)."""
        app.tracing = self
        if self.finish not in app.observers:
            app.observers.append(self.finish)

    def begin(self, app: App, ctx: RequestContext) -> None:
        """Open the request's span (called by the App as a request starts). Tracing never fails a
        request: if the span cannot be made, the request runs untraced and the error is logged."""
        try:
            self._begin(app, ctx)
        except Exception:
            ctx.span = None
            logger.exception("request %s: could not open its trace span; it runs untraced", ctx.request_id)

    def _begin(self, app: App, ctx: RequestContext) -> None:
        api = self._api
        trace = ctx.trace
        if trace is None:  # a call from Python: a new trace
            trace = ctx.trace = request_trace(None)
            set_trace(trace.traceparent)  # in the App's request context (reset with it)
        parent = None
        if trace.parent_id is not None:
            state = api.TraceState.from_header([trace.tracestate]) if trace.tracestate else None
            remote = api.SpanContext(
                int(trace.trace_id, 16), int(trace.parent_id, 16), True, api.TraceFlags(int(trace.flags, 16)), state
            )
            parent = api.set_span_in_context(api.NonRecordingSpan(remote))
        forced = self._ids.forced
        forced.trace_id, forced.span_id = int(trace.trace_id, 16), int(trace.span_id, 16)
        try:
            span = self.tracer.start_span(
                f"request {app.name}",
                context=parent,
                kind=api.SpanKind.SERVER,
                attributes={"dagserve.graph": app.name, "dagserve.request_id": ctx.request_id},
            )
        finally:
            forced.trace_id = forced.span_id = None
        trace.flags = f"{span.get_span_context().trace_flags & 0xFF:02x}"  # the sampler's decision
        ctx.span = _RequestSpan(self, span)

    def finish(self, app: App, ctx: RequestContext, error: BaseException | None, seconds: float) -> None:
        """App observer: end the request's span and any node span still open."""
        request = ctx.span
        if isinstance(request, _RequestSpan) and request.tracing is self:
            request.finish(error)

    def shutdown(self) -> None:
        """Send what is buffered and stop exporting."""
        self.provider.shutdown()


class _RequestSpan:
    __slots__ = ("calling", "calls", "span", "tracing")

    def __init__(self, tracing: Tracing, span: Any) -> None:
        self.tracing = tracing
        self.span = span
        self.calling: _CallSpan | None = None
        self.calls: list[_CallSpan] = []

    def call(self, step: Step) -> _CallSpan:
        api = self.tracing._api
        span = self.tracing.tracer.start_span(
            f"node {step.name}",
            context=api.set_span_in_context(self.span),
            kind=api.SpanKind.CLIENT,
            attributes={"dagserve.node": step.name, "dagserve.retries": 0},
        )
        call = self.calling = _CallSpan(span)
        self.calls.append(call)
        return call

    def finish(self, error: BaseException | None) -> None:
        for call in self.calls:
            call.end(error)  # calls handed on whole and never awaited here: their outcome is the request's
        span = self.span
        outcome = outcome_of(error)
        span.set_attribute("dagserve.outcome", outcome)
        if outcome != "ok":
            span.set_status(self.tracing._api.Status(self.tracing._api.StatusCode.ERROR, str(error)[:200]))
        span.end()


class _CallSpan:
    __slots__ = ("_ended", "span", "traceparent")

    def __init__(self, span: Any) -> None:
        self.span = span
        c = span.get_span_context()
        self.traceparent = f"00-{c.trace_id:032x}-{c.span_id:016x}-{c.trace_flags & 0xFF:02x}"
        self._ended = False

    def set(self, key: str, value: Any) -> None:
        self.span.set_attribute(key, value)

    def activate(self) -> Any:
        return _activate(self.span)

    def deactivate(self, token: Any) -> None:
        _deactivate(token)

    def end(self, error: BaseException | None = None, finished: float | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        _end(self.span, error, finished)


def _activate(span: Any) -> Any:
    """``span`` made current in OpenTelemetry's context: what the user's own code opens nests under it."""
    from opentelemetry import context, trace

    return context.attach(trace.set_span_in_context(span))


def _deactivate(token: Any) -> None:
    from opentelemetry import context

    context.detach(token)


def _end(span: Any, error: BaseException | None, finished: float | None = None) -> None:
    outcome = outcome_of(error)
    span.set_attribute("dagserve.outcome", outcome)
    if outcome != "ok":
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
    end_time = None if finished is None else time.time_ns() - int((time.perf_counter() - finished) * 1e9)
    span.end(end_time=end_time)


class _ReplicaSpans:
    """A Ray replica's spans: a child of the node call's span for each call it runs."""

    def __init__(self, tracer: Any, replica: str) -> None:
        from opentelemetry import trace as api
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._api = api
        self._propagator = TraceContextTextMapPropagator()
        self.tracer = tracer
        self.replica = replica

    def start(self, step: str, traceparent: str) -> Any:
        parent = self._propagator.extract({"traceparent": traceparent})
        return self.tracer.start_span(
            f"replica {step}",
            context=parent,
            kind=self._api.SpanKind.SERVER,
            attributes={"dagserve.node": step, "dagserve.replica": self.replica},
        )

    def activate(self, span: Any) -> Any:
        return _activate(span)

    def deactivate(self, token: Any) -> None:
        _deactivate(token)

    def end(self, span: Any, error: BaseException | None, batch_size: int | None) -> None:
        if batch_size is not None:
            span.set_attribute("dagserve.batch_size", batch_size)
        _end(span, error)


def replica_spans(endpoint: str, replica: str) -> _ReplicaSpans:
    """The ``replica_spans`` hook (``dagserve/_hooks.py``): spans of the replica ``replica``
    exported over OTLP/HTTP to ``endpoint``, through one exporter per process and endpoint."""
    with _lock:
        tracer = _replica_tracers.get(endpoint)
        if tracer is None:
            provider, _ = _provider(otlp_exporter(endpoint), True, "dagserve")
            tracer = _replica_tracers[endpoint] = provider.get_tracer(_INSTRUMENTATION)
    return _ReplicaSpans(tracer, replica)


_lock = threading.Lock()
_replica_tracers: dict[str, Any] = {}
