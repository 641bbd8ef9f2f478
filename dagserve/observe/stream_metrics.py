"""Prometheus metrics of streams (graphs whose nodes are generators), beside
:mod:`dagserve.observe.metrics`, which hooks them on every App it instruments:

==============================================  ==================================================
``dagserve_stream_first_item_seconds``          histogram ``{graph, node}``: time from the start
                                                of a node's stream to its first item
``dagserve_stream_item_gap_seconds``            histogram ``{graph, node}``: time between items
``dagserve_stream_items_total``                 counter ``{graph, node}``: items streamed
``dagserve_streams_cancelled_total``            counter ``{graph}``: streams stopped before their
                                                end because the client went away (or stopped
                                                reading, from Python)
==============================================  ==================================================

``node`` is each stream the ingress process reads: on the local backend every generator node of
the graph, on Ray the graph's output node (streams read replica to replica are not seen here).
Items are recorded as they pass, under one lock, in plain lists made into families at scrape.
"""

from __future__ import annotations

import asyncio
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from dagserve.app import App
    from dagserve.runtime.executor import RequestContext

__all__ = ["ITEM_BUCKETS", "StreamMetrics"]

#: Seconds; from tokens a millisecond apart to a slow first item.
ITEM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StreamMetrics:
    """The stream series of every App hooked with :meth:`hook` (a collector of one registry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._first: dict[tuple[str, str], list[float]] = {}
        self._gap: dict[tuple[str, str], list[float]] = {}
        self._items: dict[tuple[str, str], int] = {}
        self._cancelled: dict[str, int] = {}

    def hook(self, app: App) -> None:
        """Record ``app``'s streams: its per-item observer and, after each request, cancellations."""
        graph = app.name
        previous = app.item_observer
        record = self._item_recorder(graph)

        def observe_item(node: str, kind: str, seconds: float) -> None:
            record(node, kind, seconds)
            if previous is not None:
                previous(node, kind, seconds)

        app.item_observer = observe_item
        with self._lock:
            self._cancelled.setdefault(graph, 0)
        app.observers.append(self._request_observer)

    def _item_recorder(self, graph: str) -> Callable[[str, str, float], None]:
        lock, first, gap, items = self._lock, self._first, self._gap, self._items

        def record(node: str, kind: str, seconds: float) -> None:
            key = (graph, node)
            with lock:
                series = first if kind == "first" else gap
                h = series.get(key)
                if h is None:
                    h = series[key] = [0.0] * (len(ITEM_BUCKETS) + 2)
                h[bisect_left(ITEM_BUCKETS, seconds)] += 1
                h[-1] += seconds
                items[key] = items.get(key, 0) + 1

        return record

    def _request_observer(self, app: App, ctx: RequestContext, error: BaseException | None, seconds: float) -> None:
        if app.streams and isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            with self._lock:
                self._cancelled[app.name] = self._cancelled.get(app.name, 0) + 1

    def figures(self, graph: str) -> dict[str, dict[str, float]]:
        """Per streaming node of ``graph``: ``items`` streamed and ``first_item_s`` (the mean
        time to a stream's first item), since start; for the dashboard (observe/history.py)."""
        with self._lock:
            out: dict[str, dict[str, float]] = {}
            for (g, node), n in self._items.items():
                if g != graph:
                    continue
                first = self._first.get((g, node))
                starts = sum(first[:-1]) if first else 0
                figures = out[node] = {"items": n}
                if starts:
                    figures["first_item_s"] = first[-1] / starts  # type: ignore[index]
            return out

    def cancelled(self, graph: str) -> int:
        """Streams of ``graph`` stopped before their end (the client went away)."""
        with self._lock:
            return self._cancelled.get(graph, 0)

    # -- the collector -----------------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[Any, ...]:
        return (
            HistogramMetricFamily(
                "dagserve_stream_first_item_seconds",
                "Time from the start of a node's stream to its first item.",
                labels=["graph", "node"],
            ),
            HistogramMetricFamily(
                "dagserve_stream_item_gap_seconds", "Time between a node's streamed items.", labels=["graph", "node"]
            ),
            CounterMetricFamily("dagserve_stream_items", "Items streamed, per node.", labels=["graph", "node"]),
            CounterMetricFamily(
                "dagserve_streams_cancelled", "Streams stopped before their end (the client went away).", labels=["graph"]
            ),
        )

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            first = {k: list(v) for k, v in self._first.items()}
            gap = {k: list(v) for k, v in self._gap.items()}
            items, cancelled = dict(self._items), dict(self._cancelled)
        first_f, gap_f, items_f, cancelled_f = self._families()
        for family, series in ((first_f, first), (gap_f, gap)):
            for labels, h in series.items():
                family.add_metric(list(labels), cumulative(h, ITEM_BUCKETS), sum_value=h[-1])
        for labels, n in items.items():
            items_f.add_metric(list(labels), n)
        for graph, n in cancelled.items():
            cancelled_f.add_metric([graph], n)
        yield from (first_f, gap_f, items_f, cancelled_f)


def cumulative(h: list[float], buckets: tuple[float, ...]) -> list[tuple[str, float]]:
    """Per-bucket counts (then +Inf, then the sum) as Prometheus's cumulative ``(le, count)`` pairs."""
    out: list[tuple[str, float]] = []
    total = 0.0
    for le, n in zip(buckets, h, strict=False):
        total += n
        out.append((str(float(le)), total))
    out.append(("+Inf", total + h[len(buckets)]))
    return out
