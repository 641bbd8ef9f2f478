"""Prometheus metrics and request tracing on the local backend: traffic in, exact counts out."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

import dagserve
from dagserve.observe.metrics import CONTENT_TYPE, Metrics, default_metrics, instrument, render_metrics
from dagserve.observe.server_timing import (
    format_trace,
    outcome_of,
    server_timing,
    trace_headers,
    trace_observer,
    trace_requested,
)
from dagserve.runtime.executor import RequestContext


class Req(BaseModel):
    x: int
    route: str


@dagserve.node
def double(x: int) -> int:
    return 2 * x


@dagserve.node
def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


@dagserve.node(timeout_s=0.05)
async def sleepy(x: int) -> int:
    await asyncio.sleep(2)
    return x


@dagserve.node(max_ongoing_requests=1, max_queued_requests=1)
async def narrow(x: int) -> int:
    await asyncio.sleep(0.2)
    return x


@dagserve.node(max_batch_size=4, batch_wait_timeout_s=0.05)
async def batched(xs: list[int]) -> list[int]:
    return xs


def routed_graph() -> dagserve.Graph:
    with dagserve.Input(schema=Req) as inp:
        x = inp["x"]
        out = dagserve.switch(
            inp["route"],
            {"ok": double(x), "fail": boom(x), "slow": sleepy(x), "narrow": narrow(x), "batch": batched(x)},
            name="route",
        )
    return dagserve.Graph(out, name="routed")


def canary_graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = dagserve.split({"stable": double(inp), "canary": double(double(inp))}, {"stable": 70, "canary": 30}, name="canary")
    return dagserve.Graph(out, name="canary")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, keyed by (sample name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()  # a fresh registry per test: counts never leak between tests


@pytest.fixture
def routed(metrics: Metrics) -> Iterator[dagserve.App]:
    app = dagserve.deploy(routed_graph(), backend="local")
    metrics.instrument(app)
    yield app
    app.shutdown()


async def send_mixed_traffic(app: dagserve.App) -> None:
    for i in range(3):
        await app.acall({"x": i, "route": "ok"})
    for i in range(2):
        with pytest.raises(dagserve.NodeError, match="boom"):
            await app.acall({"x": i, "route": "fail"})
    with pytest.raises(dagserve.RequestTimeoutError, match="sleepy"):
        await app.acall({"x": 1, "route": "slow"})
    # One replica taking one request with one queue slot: the third concurrent call is refused.
    narrow_results = await asyncio.gather(*(app.acall({"x": i, "route": "narrow"}) for i in range(3)), return_exceptions=True)
    assert sorted(type(r).__name__ for r in narrow_results) == ["OverloadedError", "int", "int"]
    with pytest.raises(dagserve.InputValidationError):
        await app.acall({"route": "ok"})
    with pytest.raises(dagserve.NoRouteError):
        await app.acall({"x": 1, "route": "nowhere"})
    # Four at once fill one batch of four; then a batch of one.
    await asyncio.gather(*(app.acall({"x": i, "route": "batch"}) for i in range(4)))
    await app.acall({"x": 9, "route": "batch"})


async def test_request_counts_by_outcome_match_the_traffic(routed: dagserve.App, metrics: Metrics) -> None:
    await send_mixed_traffic(routed)
    m = samples(metrics.render().decode())
    expected = {"ok": 10, "client_error": 2, "node_error": 2, "timeout": 1, "overloaded": 1, "cancelled": 0, "error": 0}
    for outcome, n in expected.items():
        labels = frozenset({"graph": "routed", "outcome": outcome, "protocol": "python"}.items())
        assert m.get(("dagserve_requests_total", labels), 0) == n, outcome
    # Zero series of every outcome exist from the start (for the server's door), so rate() works at once.
    assert value(m, "dagserve_requests_total", graph="routed", outcome="cancelled", protocol="http") == 0
    assert value(m, "dagserve_request_latency_seconds_count", graph="routed") == 16
    assert value(m, "dagserve_request_latency_seconds_bucket", graph="routed", le="+Inf") == 16


async def test_node_counts_and_latency_histograms_per_node(routed: dagserve.App, metrics: Metrics) -> None:
    await send_mixed_traffic(routed)
    m = samples(metrics.render().decode())
    node_calls = {
        ("double", "ok"): 3,
        ("boom", "node_error"): 2,
        ("sleepy", "timeout"): 1,
        ("narrow", "ok"): 2,
        ("narrow", "overloaded"): 1,
        ("batched", "ok"): 5,
    }
    for (node, outcome), n in node_calls.items():
        assert value(m, "dagserve_node_requests_total", graph="routed", node=node, outcome=outcome) == n
    calls = {k: v for k, v in m.items() if k[0] == "dagserve_node_requests_total"}
    assert len(calls) == len(node_calls)  # no other node/outcome pair was recorded
    for node, n in {"double": 3, "boom": 2, "sleepy": 1, "narrow": 3, "batched": 5}.items():
        assert value(m, "dagserve_node_latency_seconds_count", graph="routed", node=node) == n
    # The timed-out node ran for about its timeout: the 0.05 s observation lands above 0.025 s.
    assert value(m, "dagserve_node_latency_seconds_bucket", graph="routed", node="sleepy", le="0.025") == 0
    assert value(m, "dagserve_node_latency_seconds_bucket", graph="routed", node="sleepy", le="60.0") == 1
    # The cheap totals for status tables agree with the counters.
    counts = metrics.node_counts("routed")
    assert counts["narrow"] == {"requests": 3, "errors": 1}
    assert counts["boom"] == {"requests": 2, "errors": 2}
    assert counts["double"] == {"requests": 3, "errors": 0}


async def test_switch_routes_are_counted(routed: dagserve.App, metrics: Metrics) -> None:
    await send_mixed_traffic(routed)
    m = samples(metrics.render().decode())
    for branch, n in {"'ok'": 3, "'fail'": 2, "'slow'": 1, "'narrow'": 3, "'batch'": 5}.items():
        assert value(m, "dagserve_route_total", graph="routed", node="route", branch=branch) == n


async def test_batch_sizes_are_a_histogram(routed: dagserve.App, metrics: Metrics) -> None:
    await send_mixed_traffic(routed)
    m = samples(metrics.render().decode())
    assert value(m, "dagserve_batch_size_count", graph="routed", node="batched") == 2
    assert value(m, "dagserve_batch_size_sum", graph="routed", node="batched") == 5
    assert value(m, "dagserve_batch_size_bucket", graph="routed", node="batched", le="1.0") == 1
    assert value(m, "dagserve_batch_size_bucket", graph="routed", node="batched", le="2.0") == 1
    assert value(m, "dagserve_batch_size_bucket", graph="routed", node="batched", le="4.0") == 2
    # Only batched nodes get a batch-size histogram.
    assert not [k for k in m if k[0] == "dagserve_batch_size_count" and ("node", "double") in k[1]]


async def test_canary_split_is_visible_per_branch(metrics: Metrics) -> None:
    app = dagserve.deploy(canary_graph(), backend="local")
    metrics.instrument(app)
    try:
        taken: Counter[str] = Counter()
        for i in range(60):
            ctx = RequestContext()
            await app.acall(i, context=ctx)
            taken[ctx.route["canary"]] += 1
    finally:
        app.shutdown()
    m = samples(metrics.render().decode())
    assert set(taken) <= {"stable", "canary"} and sum(taken.values()) == 60
    for branch in ("stable", "canary"):
        got = m.get(("dagserve_route_total", frozenset({"graph": "canary", "node": "canary", "branch": branch}.items())), 0)
        assert got == taken[branch]
    # The canary branch calls `double` twice per request: node calls show it.
    assert value(m, "dagserve_node_requests_total", graph="canary", node="double", outcome="ok") == taken["stable"] + 2 * taken["canary"]


async def test_in_flight_and_replica_gauges_are_read_at_scrape_time(routed: dagserve.App, metrics: Metrics) -> None:
    m = samples(metrics.render().decode())
    assert value(m, "dagserve_requests_in_flight", graph="routed") == 0
    assert value(m, "dagserve_graph_ready", graph="routed") == 1
    task = asyncio.ensure_future(routed.acall({"x": 1, "route": "narrow"}))
    for _ in range(100):  # bounded: the request starts within a few loop turns
        if routed.in_flight:
            break
        await asyncio.sleep(0.005)
    m = samples(metrics.render().decode())
    assert value(m, "dagserve_requests_in_flight", graph="routed") == 1
    assert await task == 1
    await asyncio.to_thread(routed.scale, "double", num_replicas=3)
    m = samples(metrics.render().decode())
    assert value(m, "dagserve_requests_in_flight", graph="routed") == 0
    assert value(m, "dagserve_replicas", graph="routed", node="double", state="target") == 3
    assert value(m, "dagserve_replicas", graph="routed", node="double", state="running") == 3
    assert value(m, "dagserve_replicas", graph="routed", node="double", state="pending") == 0
    assert value(m, "dagserve_replicas", graph="routed", node="boom", state="running") == 1


def test_closed_apps_leave_the_gauges_but_keep_their_counters(metrics: Metrics) -> None:
    app = dagserve.deploy(routed_graph(), backend="local")
    metrics.instrument(app)
    metrics.instrument(app)  # idempotent: one observer, counts once
    app.call({"x": 1, "route": "ok"})
    app.shutdown()
    m = samples(metrics.render().decode())
    assert value(m, "dagserve_requests_total", graph="routed", outcome="ok", protocol="python") == 1
    assert not [k for k in m if k[0] in ("dagserve_replicas", "dagserve_requests_in_flight")]


def test_the_process_registry_serves_every_instrumented_app() -> None:
    app = dagserve.deploy(dagserve.Graph(double, name="process_wide"), backend="local")
    try:
        assert instrument(app) is default_metrics()
        app.call(4)
        text = render_metrics().decode()
    finally:
        app.shutdown()
    m = samples(text)
    assert value(m, "dagserve_requests_total", graph="process_wide", outcome="ok", protocol="python") == 1
    assert "process_cpu_seconds_total" in text or "python_info" in text  # process metrics ride along
    assert CONTENT_TYPE.startswith("text/plain; version=")


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "ok"),
        (dagserve.InputValidationError("bad"), "client_error"),
        (dagserve.NoRouteError("none"), "client_error"),
        (dagserve.NodeError("x", node="n"), "node_error"),
        (dagserve.RequestTimeoutError("late", node="n"), "timeout"),
        (dagserve.OverloadedError("full"), "overloaded"),
        (asyncio.CancelledError(), "cancelled"),
        (dagserve.AppClosedError("closed"), "error"),
    ],
)
def test_outcome_of(error: BaseException | None, outcome: str) -> None:
    assert outcome_of(error) == outcome


# -- tracing ---------------------------------------------------------------------------------------


def test_trace_observer_logs_each_request_path_with_its_id(caplog: pytest.LogCaptureFixture) -> None:
    app = dagserve.deploy(routed_graph(), backend="local")
    app.observers.append(trace_observer)
    try:
        with caplog.at_level(logging.DEBUG, logger="dagserve.trace"):
            app.call({"x": 2, "route": "ok"}, request_id="req-42")
            with pytest.raises(dagserve.NodeError):
                app.call({"x": 2, "route": "fail"}, request_id="req-43")
    finally:
        app.shutdown()
    records = [r for r in caplog.records if r.name == "dagserve.trace"]
    assert len(records) == 2
    ok, failed = records
    assert ok.levelno == logging.DEBUG
    assert ok.request_id == "req-42" and set(ok.timings) == {"double"}  # type: ignore[attr-defined]
    assert ok.getMessage().startswith("request req-42 graph=routed outcome=ok ")
    assert "double " in ok.getMessage() and "route route='ok'" in ok.getMessage()
    assert "outcome=node_error" in failed.getMessage() and "failed at boom" in failed.getMessage()


def test_trace_observer_is_silent_unless_debug_is_on(caplog: pytest.LogCaptureFixture) -> None:
    app = dagserve.deploy(routed_graph(), backend="local")
    app.observers.append(trace_observer)
    try:
        with caplog.at_level(logging.INFO, logger="dagserve.trace"):
            app.call({"x": 2, "route": "ok"})
    finally:
        app.shutdown()
    assert not [r for r in caplog.records if r.name == "dagserve.trace"]


def test_server_timing_header_lists_nodes_then_total() -> None:
    ctx = RequestContext(request_id="abc", timings={"clean": 0.00125, "M.a#2": 0.5, "wëird name": 0.002}, route={"lang": "'en'"})
    assert server_timing(ctx, 0.75) == 'clean;dur=1.25, M.a#2;dur=500, w_ird_name;dur=2;desc="w\\\\xebird name", total;dur=750'
    headers = trace_headers(ctx, 0.75)
    assert headers["x-dagserve-request-id"] == "abc"
    assert headers["x-dagserve-route"] == "lang='en'"
    assert all(v.isascii() for v in headers.values())
    assert "x-dagserve-route" not in trace_headers(RequestContext(), None)


def test_trace_is_opt_in_per_request() -> None:
    assert trace_requested({"x-dagserve-trace": "1"})
    assert trace_requested({"x-dagserve-trace": " True "})
    assert not trace_requested({"x-dagserve-trace": "0"})
    assert not trace_requested({})


def test_format_trace_without_nodes() -> None:
    ctx = RequestContext(request_id="r1")
    line = format_trace("g", ctx, dagserve.InputValidationError("bad"), 0.001)
    assert line == "request r1 graph=g outcome=client_error 1 ms"
