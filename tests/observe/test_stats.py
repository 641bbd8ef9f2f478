"""The rolling per-node latency recorder behind live diagrams and status tables."""

from __future__ import annotations

import threading

import pytest

import dagserve
from dagserve.observe.stats import Latency, LatencyStats, percentile, stats_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1.0, 2.0], 0.5) == 1.0


def test_records_steps_and_requests_over_the_window() -> None:
    clock = FakeClock()
    stats = LatencyStats(window_s=10, clock=clock)
    for ms in range(1, 11):
        stats.observe({"clean": ms / 1000, "Model": ms / 100}, request_s=ms / 10)
        clock.now += 1
    lat = stats.node("clean")
    assert lat == Latency(count=10, errors=0, p50_s=0.005, p99_s=0.01, mean_s=0.0055, max_s=0.01, rate_per_s=1.0)
    assert stats.node("Model") is not None and stats.node("Model").p50_s == 0.05  # type: ignore[union-attr]
    assert stats.requests().count == 10  # type: ignore[union-attr]
    assert list(stats.nodes()) == ["Model", "clean"]
    assert stats.node("missing") is None

    clock.now += 5  # the five oldest samples (t=1000..1004) are now older than 10 s
    assert stats.node("clean").count == 5  # type: ignore[union-attr]
    assert stats.node("clean").p50_s == 0.008  # type: ignore[union-attr]
    clock.now += 100
    assert stats.node("clean") is None
    assert stats.nodes() == {}
    assert stats.requests() is None


def test_sample_count_is_bounded_and_rate_uses_the_span_the_buffer_covers() -> None:
    clock = FakeClock()
    stats = LatencyStats(window_s=60, max_samples=4, clock=clock)
    for _ in range(10):
        stats.observe({"a": 0.001})
        clock.now += 0.5
    lat = stats.node("a")
    assert lat is not None and lat.count == 4
    # The 4 samples kept were taken at 3.0, 3.5, 4.0 and 4.5 s; read at 5.0 s: 4 per 2 s.
    assert lat.rate_per_s == pytest.approx(2.0)


def test_failed_node_and_failed_requests_are_counted() -> None:
    stats = LatencyStats()
    stats.observe({"a": 0.1, "b": 0.2}, request_s=0.3, failed=True, failed_node="b")
    stats.observe({"a": 0.1}, request_s=0.1)
    assert stats.node("a").errors == 0  # type: ignore[union-attr]
    assert stats.node("b").errors == 1  # type: ignore[union-attr]
    assert stats.requests().errors == 1  # type: ignore[union-attr]
    stats.clear()
    assert stats.nodes() == {}


def test_deployments_merge_the_steps_of_one_model_instance() -> None:
    @dagserve.node
    class Encoder:
        def embed(self, text: str) -> int:
            return len(text)

    @dagserve.node
    def add(a: int, b: int) -> int:
        return a + b

    enc = Encoder()
    with dagserve.Input() as inp:
        graph = dagserve.Graph(add(enc.embed(inp["a"]), enc.embed(inp["b"])), name="two_calls")
    plan = dagserve.compile(graph)
    stats = LatencyStats()
    stats.observe({"Encoder.embed": 0.01, "Encoder.embed#2": 0.03, "add": 0.001})
    by_dep = stats.deployments(plan)
    assert sorted(by_dep) == ["Encoder", "add"]
    assert by_dep["Encoder"].count == 2
    assert by_dep["Encoder"].max_s == 0.03


def test_invalid_settings_are_errors() -> None:
    with pytest.raises(dagserve.DagserveError, match=r"window_s > 0 and max_samples >= 1, got window_s=0 "):
        LatencyStats(window_s=0)


def test_reads_while_recording_from_another_thread() -> None:
    stats = LatencyStats(max_samples=64)
    stop = threading.Event()

    def write() -> None:
        for i in range(20_000):
            if stop.is_set():
                return
            stats.observe({f"n{i % 5}": 0.001}, request_s=0.002)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(200):
            stats.nodes()
            stats.requests()
    finally:
        stop.set()
        writer.join(timeout=10)
    assert not writer.is_alive()
    assert all(lat.count <= 64 for lat in stats.nodes().values())


def test_stats_for_installs_one_observer_that_records_real_requests() -> None:
    @dagserve.node
    def double(x: int) -> int:
        return 2 * x

    @dagserve.node
    def boom(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    with dagserve.Input() as inp:
        graph = dagserve.Graph(boom(double(inp)), name="stats")
    with dagserve.deploy(graph, backend="local") as app:
        stats = stats_for(app)
        assert stats_for(app) is stats
        assert app.observers.count(stats) == 1
        for x in (1, 2, 3):
            app.call(x)
        with pytest.raises(dagserve.NodeError):
            app.call(-1)
        assert stats.node("double").count == 4  # type: ignore[union-attr]
        assert stats.node("boom").count == 4  # type: ignore[union-attr]
        assert stats.node("boom").errors == 1  # type: ignore[union-attr]
        requests = stats.requests()
        assert requests is not None and requests.count == 4 and requests.errors == 1
        assert requests.p50_s >= stats.node("double").p50_s  # type: ignore[union-attr]


def test_deployments_since_keeps_only_the_later_samples() -> None:
    clock = FakeClock()
    stats = LatencyStats(window_s=60, clock=clock)
    plan = dagserve.compile(_two_nodes())
    stats.observe({"pre": 0.5})
    clock.now += 2
    mark = clock.now
    stats.observe({"pre": 0.001})
    stats.observe({"pre": 0.003})
    recent = stats.deployments(plan, since=mark)["pre"]
    assert recent.count == 2 and recent.p99_s == 0.003
    assert stats.deployments(plan)["pre"].count == 3
    assert stats.deployments(plan, since=clock.now + 1) == {}


def _two_nodes() -> dagserve.Graph:
    from tests.example_graphs import chain

    return chain()
