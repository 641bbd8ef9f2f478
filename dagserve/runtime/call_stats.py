"""Latency histograms of calls, kept where the calls are made and merged where they are exported.

A node's calls through handles (issue 25) run wherever the calling node runs, and its caller
records each one in a :class:`CallStats`: ``RunnerCaller`` in the App's process (the local
backend, Ray's inline nodes), ``ReplicaCaller`` in a Ray replica, which sends
:meth:`CallStats.snapshot` with its other figures when asked (the direct transport's ``STATS``
frame). ``Backend.handle_calls`` sums the snapshots with :func:`merge`, and the metrics add them to
the series ``dagserve_node_requests_total`` and ``dagserve_node_latency_seconds``
(observe/metrics.py).

A series is keyed ``(graph, node, outcome)``: the graph of the request the call served, the
callee's name (``Classifier``, or ``Classifier.method`` for another method) and the call's own
outcome (:func:`dagserve._errors.outcome_of`). Its value is a histogram over
:data:`LATENCY_BUCKETS` as a list: one count per bucket, one for +Inf, then the sum of seconds.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

__all__ = ["LATENCY_BUCKETS", "CallStats", "add", "merge", "new_histogram", "observe"]

#: Upper bounds in seconds of the latency histograms' buckets (requests, nodes, handle calls).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def new_histogram() -> list[float]:
    """Zero counts for every bucket and +Inf, then a zero sum."""
    return [0.0] * (len(LATENCY_BUCKETS) + 2)


def add(into: list[float], h: list[float]) -> None:
    """Add histogram ``h`` into ``into`` (same buckets)."""
    for i, v in enumerate(h):
        into[i] += v


def observe(h: list[float], seconds: float) -> None:
    h[bisect_left(LATENCY_BUCKETS, seconds)] += 1
    h[-1] += seconds


class CallStats:
    """One process's histograms of the calls it made, by ``(graph, node, outcome)``."""

    __slots__ = ("series",)

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], list[float]] = {}

    def record(self, graph: str, node: str, outcome: str, seconds: float) -> None:
        key = (graph, node, outcome)
        h = self.series.get(key)
        if h is None:
            h = self.series[key] = new_histogram()
        observe(h, seconds)

    def snapshot(self) -> list[list[Any]]:
        """The series as plain lists (``[graph, node, outcome, histogram]``), fit for JSON and frames.
        Safe from another thread (a scrape) while the loop records: the items are copied first, in
        one step under the GIL, and a histogram read mid-update is off by one call at most."""
        return [[*key, list(h)] for key, h in list(self.series.items())]


def merge(snapshots: list[Any]) -> dict[tuple[str, str, str], list[float]]:
    """The sum of several :meth:`CallStats.snapshot` values (one per replica); malformed entries
    (a replica of another version) are left out."""
    out: dict[tuple[str, str, str], list[float]] = {}
    width = len(LATENCY_BUCKETS) + 2
    for snapshot in snapshots:
        for entry in snapshot or ():
            try:
                graph, node, outcome, h = entry
                values = [float(v) for v in h]
            except (TypeError, ValueError):
                continue
            if len(values) != width or not all(isinstance(x, str) for x in (graph, node, outcome)):
                continue
            into = out.get((graph, node, outcome))
            if into is None:
                out[(graph, node, outcome)] = values
            else:
                add(into, values)
    return out
