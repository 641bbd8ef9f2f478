"""Checks of calls through handles shared by the local and the Ray tests (graphs: handle_graphs.py)."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dagserve.observe.metrics import Metrics, instrument

Series = dict[tuple[str, ...], float]


def node_series(metrics: Metrics) -> tuple[Series, Series]:
    """``dagserve_node_requests_total`` by (graph, node, outcome) and the observation counts of
    ``dagserve_node_latency_seconds`` by (graph, node), as scraped."""
    calls: Series = {}
    observed: Series = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == "dagserve_node_requests_total":
                calls[(s.labels["graph"], s.labels["node"], s.labels["outcome"])] = s.value
            elif s.name == "dagserve_node_latency_seconds_count":
                observed[(s.labels["graph"], s.labels["node"])] = s.value
    return calls, observed


def _delta(after: Series, before: Series, key: tuple[str, ...]) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def check_calls_through_handles_are_node_calls(group: Any, classifier: str, tools: str) -> None:
    """Each call through a handle is one call of its callee's node in the metrics, with its own
    outcome, under the graph whose request made it, whichever process made it (a replica on Ray).

    ``group`` deploys ``fan_out`` and ``retry`` (handle_graphs.py) with one Classifier and one Tools."""
    metrics = Metrics()
    for graph in ("fan_out", "retry"):
        instrument(group.graphs[graph], metrics)
    calls, observed = node_series(metrics)  # earlier tests' calls: counts since deploy
    results = list(group.graphs["fan_out"].map([{"n": 3}] * 5, concurrency=5))
    assert [r["fan"]["labels"] for r in results] == [["c0", "c1", "c2"]] * 5
    assert group.graphs["retry"].call({"x": 1})["error"] == "ValueError"
    after_calls, after_observed = node_series(metrics)
    # Per request: FanOut 3 crops + SyncUser 1; Tools.double: FanOut 2, SyncUser 2, use_handle 1.
    assert _delta(after_calls, calls, ("fan_out", classifier, "ok")) == 5 * 4
    assert _delta(after_observed, observed, ("fan_out", classifier)) == 5 * 4
    assert _delta(after_calls, calls, ("fan_out", f"{tools}.double", "ok")) == 5 * 5
    assert _delta(after_calls, calls, ("fan_out", f"{tools}.request_id", "ok")) == 5 * 2
    # The failed call has its own outcome, though the request that made it succeeded.
    assert _delta(after_calls, calls, ("retry", f"{tools}.fail", "node_error")) == 1
    assert _delta(after_calls, calls, ("retry", f"{tools}.fail", "ok")) == 0
    # Nothing of the retry graph's calls counts under fan_out, nor the other way round.
    assert not any(k[0] == "retry" and k[1] == classifier for k in after_calls)
    assert _delta(after_calls, calls, ("fan_out", f"{tools}.fail", "node_error")) == 0
