"""The dashboard's history of a running App: rates and latencies per interval, fixed memory,
recent errors without payloads, features' figures. On real local-backend Apps."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

import dagserve
from dagserve.observe import history as history_module
from dagserve.observe.history import FEATURES, HISTORY_POINTS, RECENT_ERRORS, History, history_for
from dagserve.observe.metrics import Metrics
from dagserve.observe.server_timing import OUTCOMES
from tests.example_graphs import batched, chain, failing


@pytest.fixture
def chained() -> Iterator[dagserve.App]:
    app = dagserve.deploy(chain(), backend="local")
    yield app
    app.shutdown()


def test_a_point_holds_the_rates_and_latencies_of_its_interval(chained: dagserve.App) -> None:
    history = History(chained, Metrics())
    history.sample()  # the baseline: no point yet
    assert history.snapshot()["history"]["t"] == []
    for x in range(6):
        chained.call(x)
    history.sample()
    snap = history.snapshot()
    points = snap["history"]
    assert len(points["t"]) == 1
    assert points["requests"]["ok"][0] > 0
    assert points["requests"]["node_error"] == [0.0]
    assert set(points["requests"]) == set(OUTCOMES)
    scale = points["nodes"]["Scale"]
    assert scale["calls_per_s"][0] > 0 and scale["p50_s"][0] > 0 and scale["p99_s"][0] >= scale["p50_s"][0]
    assert scale["running"] == [1.0] and scale["target"] == [1.0]
    node = snap["nodes"]["Scale"]
    assert node["calls"] == 6 and node["errors"] == 0 and node["state"] == "RUNNING"
    assert node["in_flight"] == 0 and node["recent_errors"] == [] and node["features"] == {}
    assert snap["requests"]["ok"] == 6 and snap["ready"] is True and snap["backend"] == "local"

    # Nothing new: the next interval has no latency, and a rate of zero.
    history.sample()
    points = history.snapshot(since=snap["now"])["history"]
    assert len(points["t"]) == 1
    assert points["nodes"]["Scale"]["p50_s"] == [None]
    assert points["nodes"]["Scale"]["calls_per_s"] == [0.0]


def test_memory_is_fixed_whatever_the_traffic(chained: dagserve.App) -> None:
    history = History(chained, Metrics())
    size = history.nbytes()
    # 7 outcomes and 7 series for each of 3 nodes, 450 float64 each, plus the time axis: ~100 KB.
    assert size == 8 * HISTORY_POINTS * (1 + len(OUTCOMES) + 3 * len(history_module.NODE_SERIES))
    assert size < 2**20
    for i in range(HISTORY_POINTS * 2 + 7):
        if i % 50 == 0:
            chained.call(i)
        history.sample()
    snap = history.snapshot()
    assert len(snap["history"]["t"]) == HISTORY_POINTS
    assert all(len(v) == HISTORY_POINTS for v in snap["history"]["requests"].values())
    assert history.nbytes() == size
    times = snap["history"]["t"]
    assert times == sorted(times)  # oldest first across the ring's wrap
    assert history.snapshot(since=times[-2])["history"]["t"] == times[-1:]


def test_recent_errors_keep_request_ids_and_never_payloads() -> None:
    app = dagserve.deploy(failing(), backend="local")
    try:
        history = History(app, Metrics())
        app.observers.append(history)
        secret = 7_391_046_283  # long: no timestamp or id in the record can hold it by chance
        for i in range(RECENT_ERRORS + 5):
            with pytest.raises(dagserve.NodeError):
                app.call(secret + i, request_id=f"req-{i}")
        history.sample()
        node = history.snapshot()["nodes"]["fail"]
        errors = node["recent_errors"]
        assert len(errors) == RECENT_ERRORS  # bounded: the oldest went
        last = errors[-1]
        assert last["request_id"] == f"req-{RECENT_ERRORS + 4}"
        assert last["type"] == "ValueError" and last["outcome"] == "node_error" and last["node"] == "fail"
        assert last["status"] == 500
        kept = repr(errors)
        # The message (it names the failing value, the payload + 1) is not kept.
        assert not any(str(secret + i) in kept for i in range(RECENT_ERRORS + 7))
        assert node["errors"] == RECENT_ERRORS + 5
    finally:
        app.shutdown()


def test_batch_sizes_and_features_show_on_their_nodes(caplog: pytest.LogCaptureFixture) -> None:
    app = dagserve.deploy(batched(), backend="local")

    def queue(app: dagserve.App, metrics: Any) -> dict[str, dict[str, Any]]:
        return {"batch_size": {"depth": 3}, "": {"jobs_waiting": 5}}

    def broken(app: dagserve.App, metrics: Any) -> dict[str, dict[str, Any]]:
        raise RuntimeError("feature bug")

    FEATURES["queue"] = queue
    FEATURES["broken"] = broken
    try:
        history = History(app, Metrics())
        list(app.map(range(8)))
        with caplog.at_level(logging.ERROR, "dagserve.dashboard"):
            history.sample()
        snap = history.snapshot()
        node = snap["nodes"]["batch_size"]
        assert node["features"] == {"queue": {"depth": 3}}
        assert snap["features"] == {"queue": {"jobs_waiting": 5}}  # the graph's own figures
        assert "feature bug" in caplog.text  # logged; the other figures are still there
        assert node["batch"]["batches"] >= 1 and 1 <= node["batch"]["mean"] <= 8 and node["batch"]["max"] <= 8
    finally:
        del FEATURES["queue"], FEATURES["broken"]
        app.shutdown()


def test_streams_figures_come_from_the_stream_metrics() -> None:
    from tests.stream_graphs import chain as streamed

    app = dagserve.deploy(streamed, backend="local")
    try:
        metrics = Metrics()
        history = History(app, metrics)
        items = list(app.stream({"n": 4}))
        history.sample()
        stream = next(n["features"]["stream"] for n in history.snapshot()["nodes"].values() if "stream" in n["features"])
        assert stream["items"] >= len(items) > 0
        assert stream["first_item_s"] >= 0
    finally:
        app.shutdown()


def test_history_for_installs_once_and_the_sampler_stops_with_the_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_module, "SAMPLE_INTERVAL_S", 0.05)
    app = dagserve.deploy(chain(), backend="local")
    history = history_for(app)
    assert history_for(app) is history
    assert sum(isinstance(o, History) for o in app.observers) == 1
    app.call(1)
    sampler = history_module._sampler
    thread = sampler._thread
    assert thread is not None and thread.is_alive()
    for _ in range(400):  # bounded: the sampler adds points every 0.05 s
        if history.snapshot()["history"]["t"]:
            break
        thread.join(0.05)
    assert history.snapshot()["history"]["t"]
    app.shutdown()
    thread.join(30)
    assert not thread.is_alive()
