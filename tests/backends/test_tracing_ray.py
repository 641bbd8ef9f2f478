"""Traces across processes on a real local Ray: the ingress's spans (in memory) and the replicas'
spans, which the replica processes export over OTLP/HTTP to a small receiver this module runs on
127.0.0.1, form one trace: each replica-side span is a child of its node call's span, on the
direct transport and through Serve's handles alike."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import dagserve
from dagserve.observe.otel import Tracing
from dagserve.observe.traceparent import request_trace
from dagserve.runtime.tracing import OTLP_ENDPOINT_ENV, current_trace_id
from tests.otlp_receiver import Receiver

pytestmark = pytest.mark.ray

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@dagserve.node(max_batch_size=4, batch_wait_timeout_s=0.05)
class Times:
    def __init__(self, k: int) -> None:
        self.k = k

    async def __call__(self, xs: list[int]) -> list[int]:
        return [x * self.k for x in xs]


@dagserve.node
def tagged(x: int) -> list[object]:
    return [x, current_trace_id()]  # what the replica's log records get as trace_id


def graph(name: str) -> dagserve.Graph:
    with dagserve.Input() as inp:
        return dagserve.Graph(tagged(Times(3)(inp)), name=name)  # Times's result goes whole to tagged


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    from dagserve.backends.ray.cluster import start_local_ray

    r = Receiver()
    saved = {k: os.environ.get(k) for k in (OTLP_ENDPOINT_ENV, "OTEL_BSP_SCHEDULE_DELAY")}
    # Read when a graph deploys (each replica's spec names it); the export delay, by the replicas'
    # SDK, from the environment they inherit from this process's Ray.
    os.environ[OTLP_ENDPOINT_ENV] = r.url
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "200"
    start_local_ray(num_cpus=2)
    try:
        yield r
    finally:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        r.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize("direct", [True, False], ids=["direct-transport", "serve-handles"])
def test_replica_spans_are_children_of_the_node_call_spans(receiver: Receiver, direct: bool) -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter)
    name = "traced_direct" if direct else "traced_serve"
    with dagserve.deploy(graph(name), backend="ray", direct_transport=direct, ready_timeout_s=180) as app:
        if direct:  # the first calls may go through Serve while the direct pools connect
            deadline = time.monotonic() + 30
            while app.backend.transport("Times") != "direct" and time.monotonic() < deadline:
                app.call(1)
                time.sleep(0.1)
            assert app.backend.transport("Times") == "direct"
        # Export off: the trace context still reaches the replicas, for their log records.
        ctx = dagserve.RequestContext(trace=request_trace(f"00-{TRACE}-00f067aa0ba902b7-01"))
        assert asyncio.run(app.acall(5, context=ctx)) == [15, TRACE]
        assert app.call(5) == [15, None]  # a call from Python without a trace context
        tracing.install(app)
        ctx = dagserve.RequestContext(trace=request_trace(f"00-{TRACE}-00f067aa0ba902b7-01"))
        assert asyncio.run(app.acall(5, context=ctx)) == [15, TRACE]
    tracing.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {f"request {name}", "node Times", "node tagged"}
    nodes = {n: spans[f"node {n}"] for n in ("Times", "tagged")}
    for node in nodes.values():
        assert f"{node.context.trace_id:032x}" == TRACE
        assert node.parent.span_id == spans[f"request {name}"].context.span_id
        assert node.attributes["dagserve.outcome"] == "ok" and node.attributes["dagserve.retries"] == 0
        assert node.end_time >= node.start_time
    by_parent = receiver.wait_for({n.context.span_id.to_bytes(8, "big") for n in nodes.values()})
    assert len(by_parent) == 2, f"replica spans received: {len(receiver.spans)}"
    for node_name, node in nodes.items():
        replica = by_parent[node.context.span_id.to_bytes(8, "big")]
        attrs = {a.key: a.value for a in replica.attributes}
        assert replica.trace_id.hex() == TRACE
        assert replica.name == f"replica {node_name}"
        assert attrs["dagserve.node"].string_value == node_name
        assert attrs["dagserve.outcome"].string_value == "ok"
        assert attrs["dagserve.replica"].string_value not in ("", node_name)  # Serve's replica id
        # The replica's work lies within the node call as the ingress saw it (one machine, one clock).
        assert node.start_time <= replica.start_time_unix_nano <= replica.end_time_unix_nano <= node.end_time
    times = {a.key: a.value for a in by_parent[nodes["Times"].context.span_id.to_bytes(8, "big")].attributes}
    assert times["dagserve.batch_size"].int_value == 1


@dagserve.node
async def count_to(x: int) -> object:
    for i in range(x):
        yield [i, current_trace_id()]


def test_a_stream_on_ray_exports_a_request_span_and_one_per_node(receiver: Receiver) -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter)
    with dagserve.Input() as inp:
        streamed = dagserve.Graph(count_to(Times(1)(inp)), name="traced_stream")
    with dagserve.deploy(streamed, backend="ray", ready_timeout_s=180) as app:
        tracing.install(app)
        ctx = dagserve.RequestContext(trace=request_trace(f"00-{TRACE}-00f067aa0ba902b7-01"))

        async def read() -> list[object]:
            return [item async for item in app.astream(3, context=ctx)]

        # The generator's replica sees the request's trace, as a plain call's replica does.
        assert asyncio.run(read()) == [[0, TRACE], [1, TRACE], [2, TRACE]]
    tracing.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"request traced_stream", "node Times", "node count_to"}
    request = spans["request traced_stream"]
    for node in ("Times", "count_to"):
        assert spans[f"node {node}"].parent.span_id == request.context.span_id
        assert spans[f"node {node}"].attributes["dagserve.outcome"] == "ok"
    assert spans["node count_to"].attributes["dagserve.items"] == 3
