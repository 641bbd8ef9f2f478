"""OpenTelemetry spans on the local backend (observe/otel.py), exported to the SDK's in-memory
exporter: one per request and one per node call, joined to the caller's trace; nothing at all,
not even the SDK's import, when traces are off."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import dagserve
from dagserve.observe.otel import Tracing
from dagserve.observe.traceparent import request_trace

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@dagserve.node
def clean(text: str) -> str:
    if text == "boom":
        raise ValueError("no boom here")
    return text.lower()


@dagserve.node(max_batch_size=8, batch_wait_timeout_s=0.05)
class Length:
    async def __call__(self, texts: list[str]) -> list[int]:
        return [len(t) for t in texts]


@dagserve.node
async def shout(text: str) -> str:
    return text.upper()


def graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        text = clean(inp["text"])
        return dagserve.Graph({"n": Length()(text), "loud": shout(text)}, name="otel")


@pytest.fixture
def traced() -> Iterator[tuple[dagserve.App, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter)
    with dagserve.deploy(graph(), backend="local") as app:
        tracing.install(app)
        yield app, exporter
    tracing.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_a_request_span_with_one_child_span_per_node_call(traced: tuple[dagserve.App, InMemorySpanExporter]) -> None:
    app, exporter = traced
    ctx = dagserve.RequestContext()
    assert asyncio.run(app.acall({"text": "Hi There"}, context=ctx)) == {"n": 8, "loud": "HI THERE"}
    spans = by_name(exporter)
    assert set(spans) == {"request otel", "node clean", "node Length", "node shout"}
    request = spans["request otel"]
    assert request.kind == SpanKind.SERVER and request.parent is None
    assert request.attributes["dagserve.request_id"] == ctx.request_id
    assert request.attributes["dagserve.outcome"] == "ok"
    # The request's span has the ids of the request's trace context (what the ingress answers with).
    assert f"{request.context.trace_id:032x}" == ctx.trace.trace_id
    assert f"{request.context.span_id:016x}" == ctx.trace.span_id
    for name in ("clean", "Length", "shout"):
        node = spans[f"node {name}"]
        assert node.kind == SpanKind.CLIENT
        assert node.context.trace_id == request.context.trace_id
        assert node.parent.span_id == request.context.span_id
        assert node.attributes["dagserve.node"] == name
        assert node.attributes["dagserve.outcome"] == "ok"
        assert node.attributes["dagserve.retries"] == 0
        assert node.attributes["dagserve.replica"].startswith(name + "#")
        assert request.start_time <= node.start_time <= node.end_time <= request.end_time
    assert spans["node Length"].attributes["dagserve.batch_size"] == 1
    assert "dagserve.batch_size" not in spans["node clean"].attributes


def test_a_batch_size_per_call_and_a_span_per_request(traced: tuple[dagserve.App, InMemorySpanExporter]) -> None:
    app, exporter = traced

    async def burst() -> None:
        await asyncio.gather(*(app.acall({"text": "x" * i}) for i in range(1, 6)))

    asyncio.run(burst())
    spans = exporter.get_finished_spans()
    requests = [s for s in spans if s.name == "request otel"]
    assert len(requests) == 5 and len({s.context.trace_id for s in requests}) == 5
    sizes = [s.attributes["dagserve.batch_size"] for s in spans if s.name == "node Length"]
    assert len(sizes) == 5 and max(sizes) > 1  # batched together, each call says how many were in its batch


def test_the_callers_trace_is_joined(traced: tuple[dagserve.App, InMemorySpanExporter]) -> None:
    app, exporter = traced
    ctx = dagserve.RequestContext(trace=request_trace(f"00-{TRACE}-{PARENT}-01", "vendor=x"))
    asyncio.run(app.acall({"text": "a"}, context=ctx))
    request = by_name(exporter)["request otel"]
    assert f"{request.context.trace_id:032x}" == TRACE
    assert f"{request.parent.span_id:016x}" == PARENT and request.parent.is_remote
    assert f"{request.context.span_id:016x}" == ctx.trace.span_id
    assert request.context.trace_state.get("vendor") == "x"
    assert all(f"{s.context.trace_id:032x}" == TRACE for s in exporter.get_finished_spans())


def test_a_caller_that_does_not_sample_gets_no_spans(traced: tuple[dagserve.App, InMemorySpanExporter]) -> None:
    app, exporter = traced
    ctx = dagserve.RequestContext(trace=request_trace(f"00-{TRACE}-{PARENT}-00"))
    asyncio.run(app.acall({"text": "a"}, context=ctx))
    assert exporter.get_finished_spans() == () and ctx.trace.flags == "00"


def test_a_failing_node_marks_its_span_and_the_requests(traced: tuple[dagserve.App, InMemorySpanExporter]) -> None:
    app, exporter = traced
    with pytest.raises(dagserve.NodeError):
        app.call({"text": "boom"})
    spans = by_name(exporter)
    assert set(spans) == {"request otel", "node clean"}  # the nodes after it never ran
    for span in spans.values():
        assert span.attributes["dagserve.outcome"] == "node_error"
        assert span.status.status_code == StatusCode.ERROR
    assert "ValueError" in spans["node clean"].status.description


def test_a_span_that_cannot_be_made_never_fails_the_request(
    traced: tuple[dagserve.App, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    app, exporter = traced
    tracing = app.tracing
    assert isinstance(tracing, Tracing)
    tracing.tracer = None  # start_span now raises AttributeError
    ctx = dagserve.RequestContext()
    assert asyncio.run(app.acall({"text": "ok"}, context=ctx)) == {"n": 2, "loud": "OK"}
    assert ctx.span is None and exporter.get_finished_spans() == ()
    assert "could not open its trace span" in caplog.text


def test_an_endpoint_without_the_exporter_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(dagserve.OptionsError, match=r"dagserve\[otel\]"):
        Tracing(endpoint="http://127.0.0.1:4318")
    with pytest.raises(dagserve.OptionsError, match="either endpoint"):
        Tracing()


def test_off_costs_no_sdk_import_and_no_span_objects() -> None:
    code = """
import sys, dagserve
@dagserve.node
def f(x):
    return x + 1
with dagserve.Input() as inp:
    graph = dagserve.Graph(f(f(inp)), name="off")
with dagserve.deploy(graph, backend="local") as app:
    ctx = dagserve.RequestContext()
    import asyncio
    assert asyncio.run(app.acall(1, context=ctx)) == 3
    app.asgi()
assert ctx.span is None and app.tracing is None, ctx
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr



#: The user's own OpenTelemetry setup: spans go to their provider, not dagserve's.
USER_SPANS = InMemorySpanExporter()


def user_tracer() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(USER_SPANS))
    return provider.get_tracer("user.code")


USER_TRACER = user_tracer()


@dagserve.node
async def with_own_span(x: int) -> int:
    with USER_TRACER.start_as_current_span("user work"):
        return x + 1


@dagserve.node
def sync_own_span(x: int) -> int:
    with USER_TRACER.start_as_current_span("user sync work"):
        return x * 2


def test_spans_the_nodes_own_code_opens_nest_under_the_node_span() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter)
    with dagserve.Input() as inp:
        g = dagserve.Graph(sync_own_span(with_own_span(inp)), name="nested")
    with dagserve.deploy(g, backend="local") as app:
        tracing.install(app)
        assert app.call(1) == 4
    tracing.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    user = {s.name: s for s in USER_SPANS.get_finished_spans()}
    assert user["user work"].parent.span_id == spans["node with_own_span"].context.span_id
    assert user["user sync work"].parent.span_id == spans["node sync_own_span"].context.span_id
    assert user["user work"].context.trace_id == spans["request nested"].context.trace_id
