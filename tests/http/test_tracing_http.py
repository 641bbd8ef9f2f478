"""W3C trace context over HTTP, through real uvicorn on 127.0.0.1: every answer carries a
``traceparent`` in the caller's trace (or a new one), exported or not; with traces exported, the
request's span has exactly the ids answered, and the access record the same trace id."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import dagserve
from dagserve.observe.logs import ACCESS_LOGGER, JsonFormatter, TraceIdFilter, access_observer
from dagserve.observe.otel import Tracing
from tests.background_server import BackgroundServer

pytestmark = pytest.mark.http

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
_TP = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[0-3])")


@dagserve.node
def inc(x: int) -> int:
    return x + 1


@dagserve.node
async def upto(x: int) -> Any:
    for i in range(x):
        yield i


def graph(name: str) -> dagserve.Graph:
    with dagserve.Input() as inp:
        return dagserve.Graph(inc(inc(inp["x"])), name=name)


def stream_graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        return dagserve.Graph(upto(inc(inp["x"])), name="streamed")


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(TraceIdFilter())
        self.setFormatter(JsonFormatter())
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(json.loads(self.format(record)))


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, InMemorySpanExporter, Lines]]:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter)
    plain = dagserve.deploy(graph("plain"), backend="local")
    traced = dagserve.deploy(graph("traced"), backend="local")
    streamed = dagserve.deploy(stream_graph(), backend="local")
    for app in (traced, streamed):
        tracing.install(app)
        app.observers.append(access_observer)
    lines = Lines()
    access = logging.getLogger(ACCESS_LOGGER)
    access.addHandler(lines)
    access.setLevel(logging.INFO)
    try:
        with BackgroundServer(dagserve.asgi_app([plain, traced, streamed])) as url:
            yield url, exporter, lines
    finally:
        access.removeHandler(lines)
        access.setLevel(logging.NOTSET)
        plain.shutdown()
        traced.shutdown()
        streamed.shutdown()
        tracing.shutdown()


def post(url: str, **headers: str) -> httpx.Response:
    return httpx.post(url, json={"x": 1}, headers=headers, timeout=30)


def ids(response: httpx.Response) -> tuple[str, str, str]:
    m = _TP.fullmatch(response.headers["traceparent"])
    assert m is not None, response.headers
    return m.group(1), m.group(2), m.group(3)


def test_the_callers_trace_comes_back_with_the_requests_span(server: tuple[str, Any, Any]) -> None:
    url = server[0]
    r = post(url + "plain", traceparent=f"00-{TRACE}-{PARENT}-01", tracestate="a=1")
    assert r.status_code == 200 and r.json() == 3
    trace, span, flags = ids(r)
    assert (trace, flags) == (TRACE, "01") and span != PARENT
    assert ids(post(url + "plain", traceparent=f"00-{TRACE}-{PARENT}-00"))[::2] == (TRACE, "00")


@pytest.mark.parametrize(
    "headers",
    [{}, {"traceparent": f"00-{'0' * 32}-{PARENT}-01"}, {"traceparent": f"00-{TRACE.upper()}-{PARENT}-01"}],
    ids=["none", "zero-trace-id", "uppercase"],
)
def test_none_or_an_invalid_one_starts_a_new_trace(server: tuple[str, Any, Any], headers: dict[str, str]) -> None:
    first, second = post(server[0] + "plain", **headers), post(server[0] + "plain", **headers)
    assert ids(first)[0] not in (TRACE, ids(second)[0]) and ids(first)[2] == "03"


def test_two_traceparent_headers_are_invalid(server: tuple[str, Any, Any]) -> None:
    headers = [("traceparent", f"00-{TRACE}-{PARENT}-01"), ("traceparent", f"00-{TRACE}-{PARENT}-01")]
    r = httpx.post(server[0] + "plain", json={"x": 1}, headers=headers, timeout=30)
    assert ids(r)[0] != TRACE


def test_refusals_and_other_routes_answer_with_it_too(server: tuple[str, Any, Any]) -> None:
    url = server[0]
    refused = httpx.post(url + "plain", content=b"{}", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert refused.status_code == 415 and ids(refused)[0] == TRACE
    assert ids(httpx.get(url + "-/healthz"))[2] == "03"


def test_exported_spans_have_the_ids_answered_and_the_access_record_its_trace(
    server: tuple[str, InMemorySpanExporter, Lines],
) -> None:
    url, exporter, lines = server
    exporter.clear()
    r = post(url + "traced", traceparent=f"00-{TRACE}-{PARENT}-01", **{"x-request-id": "tp-1"})
    trace, span, _ = ids(r)
    request = next(s for s in exporter.get_finished_spans() if s.name == "request traced")
    assert (f"{request.context.trace_id:032x}", f"{request.context.span_id:016x}") == (trace, span)
    assert f"{request.parent.span_id:016x}" == PARENT
    nodes = [s for s in exporter.get_finished_spans() if s.name.startswith("node inc")]
    assert len(nodes) == 2 and all(s.parent.span_id == request.context.span_id for s in nodes)
    fresh = post(url + "traced")  # no caller's trace: the root span has the new trace's ids
    root = [s for s in exporter.get_finished_spans() if s.name == "request traced"][-1]
    assert root.parent is None and f"{root.context.trace_id:032x}" == ids(fresh)[0]
    record = next(rec for rec in lines.records if rec["request_id"] == "tp-1")
    assert record["trace_id"] == TRACE and record["status"] == 200 and set(record["nodes"]) == {"inc", "inc#2"}


def test_a_streamed_answer_is_traced_and_logged_like_a_plain_one(
    server: tuple[str, InMemorySpanExporter, Lines],
) -> None:
    url, exporter, lines = server
    exporter.clear()
    before = len(lines.records)
    r = httpx.post(
        url + "streamed",
        json={"x": 3},
        headers={"accept": "text/event-stream", "traceparent": f"00-{TRACE}-{PARENT}-01"},
        timeout=30,
    )
    assert r.status_code == 200 and r.text.count("data:") >= 4  # items 0..3
    trace_id, span_id, _ = ids(r)
    assert trace_id == TRACE
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"request streamed", "node inc", "node upto"}
    request = spans["request streamed"]
    assert f"{request.context.span_id:016x}" == span_id and f"{request.parent.span_id:016x}" == PARENT
    assert spans["node upto"].parent.span_id == request.context.span_id
    assert spans["node upto"].attributes["dagserve.items"] == 4
    (record,) = lines.records[before:]  # one access record for the whole stream
    assert record["graph"] == "streamed" and record["protocol"] == "http" and record["trace_id"] == TRACE
    assert record["status"] == 200 and set(record["nodes"]) == {"inc", "upto"}
    assert record["duration_ms"] >= record["nodes"]["upto"] > 0
