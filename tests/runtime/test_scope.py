"""One request scope (runtime/scope.py): every door, a plain call or a stream, begins and ends
the same envelope: in-flight count, request id and trace for node code, the request's span,
observers once with a duration from a sub-microsecond clock."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvloop
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import dagserve
from dagserve.observe.otel import Tracing
from dagserve.runtime.tracing import current_trace_id

seen: dict[str, Any] = {}


@dagserve.node
def prep(x: int) -> int:
    seen["prep"] = (dagserve.current_request_id(), current_trace_id())
    return x + 1


@dagserve.node
def spin(x: int) -> int:
    """Busy for ~0.3 ms: a duration a millisecond clock reports as 0 or 1 ms."""
    end = time.perf_counter() + 0.0003
    while time.perf_counter() < end:
        pass
    return x


@dagserve.node
async def count_up(x: int) -> AsyncIterator[int]:
    seen["gen"] = (dagserve.current_request_id(), current_trace_id())
    for i in range(x):
        yield i


def plain_graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        return dagserve.Graph(spin(prep(inp)), name="plain")


def stream_graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        return dagserve.Graph(count_up(prep(inp)), name="streamed")


class Observed:
    """An App observer keeping what each request ended with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, BaseException | None, float, int]] = []

    def __call__(self, app: dagserve.App, ctx: dagserve.RequestContext, error: BaseException | None, seconds: float) -> None:
        self.calls.append((ctx.request_id, ctx.protocol, error, seconds, app.in_flight))


@pytest.fixture
def traced() -> Iterator[tuple[dagserve.App, dagserve.App, InMemorySpanExporter, Observed]]:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter)
    observed = Observed()
    with dagserve.deploy(plain_graph(), backend="local") as plain, dagserve.deploy(stream_graph(), backend="local") as streamed:
        for app in (plain, streamed):
            tracing.install(app)
            app.observers.append(observed)
        yield plain, streamed, exporter, observed
    tracing.shutdown()


def span_names(exporter: InMemorySpanExporter) -> set[str]:
    return {s.name for s in exporter.get_finished_spans()}


def test_a_stream_exports_the_same_kinds_of_spans_as_a_plain_call(traced: Any) -> None:
    plain, streamed, exporter, _ = traced
    assert plain.call(1) == 2
    assert span_names(exporter) == {"request plain", "node prep", "node spin"}
    exporter.clear()
    assert list(streamed.stream(3)) == [0, 1, 2, 3]
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"request streamed", "node prep", "node count_up"}
    request = spans["request streamed"]
    for name in ("node prep", "node count_up"):
        assert spans[name].parent.span_id == request.context.span_id
        assert spans[name].context.trace_id == request.context.trace_id
    assert spans["node count_up"].attributes["dagserve.items"] == 4
    assert spans["node count_up"].attributes["dagserve.outcome"] == "ok"
    assert request.attributes["dagserve.outcome"] == "ok"


def test_a_stream_closed_early_ends_its_spans_as_cancelled(traced: Any) -> None:
    _, streamed, exporter, observed = traced
    items = streamed.stream(50)
    assert next(items) == 0
    items.close()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["request streamed"].attributes["dagserve.outcome"] == "cancelled"
    assert spans["node count_up"].attributes["dagserve.outcome"] == "cancelled"
    assert len(observed.calls) == 1 and isinstance(observed.calls[0][2], asyncio.CancelledError)


def test_a_stream_is_one_request_for_observers_in_flight_and_node_code(traced: Any) -> None:
    _, streamed, _, observed = traced

    async def read() -> list[int]:
        items = []
        async for item in streamed.astream(2, request_id="rid-stream"):
            assert streamed.in_flight == 1  # counted while it streams
            items.append(item)
        return items

    assert asyncio.run(read()) == [0, 1, 2]
    assert streamed.in_flight == 0
    ((rid, protocol, error, seconds, in_flight_after),) = observed.calls
    assert (rid, protocol, error, in_flight_after) == ("rid-stream", "python", None, 0)
    assert seconds > 0
    # Node code of the stream sees the request's id and trace, upstream and inside the generator.
    assert seen["prep"][0] == seen["gen"][0] == "rid-stream"
    assert seen["gen"][1] is not None and seen["gen"][1] == seen["prep"][1]


def test_durations_have_sub_millisecond_resolution_under_uvloop(traced: Any) -> None:
    plain, _, _, observed = traced

    async def main() -> dict[str, float]:
        ctx = dagserve.RequestContext()
        for _ in range(5):
            await plain.acall(1, context=ctx)
        return ctx.timings

    timings = uvloop.run(main())
    seconds = [s for _, _, _, s, _ in observed.calls]
    assert len(seconds) == 5
    for s in seconds:
        assert 0.0001 < s < 0.1, s  # a ~0.3 ms node: neither 0 nor a whole-millisecond tick
    assert not all(float(round(s * 1000, 3)).is_integer() for s in seconds)
    assert 0.0001 < timings["spin"] < 0.1


def test_the_access_record_of_a_stream_has_its_whole_duration(traced: Any, caplog: pytest.LogCaptureFixture) -> None:
    from dagserve.observe.logs import ACCESS_LOGGER, access_observer

    _, streamed, _, _ = traced
    streamed.observers.append(access_observer)
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        assert list(streamed.stream(4, request_id="rid-access")) == [0, 1, 2, 3, 4]
    (record,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert record.request_id == "rid-access" and record.status == 200 and record.protocol == "python"
    assert set(record.nodes) == {"prep", "count_up"}
    assert record.duration_ms >= max(record.nodes.values()) > 0
