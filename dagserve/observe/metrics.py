"""Prometheus metrics for running graphs, through the standard ``prometheus_client`` library.

One registry per process (:func:`default_metrics`); :func:`instrument` hangs an observer on an
:class:`~dagserve.App` and :func:`render_metrics` produces the text ``GET /metrics`` returns
(:func:`metrics_endpoint` is that route for the ingress)::

    from dagserve.observe.metrics import instrument, render_metrics, CONTENT_TYPE

    instrument(app)                      # once per App; idempotent
    body = render_metrics()              # bytes in the Prometheus text format

What is exported (``graph`` is the graph's name, ``node`` a deployment's name as in ``App.status()``):

============================================  ====================================================
``dagserve_requests_total``                   counter ``{graph, outcome, protocol}``: requests by outcome and door
                                              (ok, client_error, node_error, timeout, overloaded,
                                              cancelled, error)
``dagserve_request_latency_seconds``          histogram ``{graph}``: whole-request latency
``dagserve_requests_in_flight``               gauge ``{graph}``: requests running now
``dagserve_node_requests_total``              counter ``{graph, node, outcome}``: node calls; the
                                              node an error names gets that outcome, the other
                                              nodes of a failed request get ``aborted``; a
                                              call through a handle counts with its own outcome
``dagserve_node_latency_seconds``             histogram ``{graph, node}``: one observation per call
                                              (the node's own time: from its inputs being ready),
                                              calls through handles too, on every backend (the
                                              caller's time; ``Node.method`` for another method)
``dagserve_batch_size``                       histogram ``{graph, node}``: sizes of the batches
                                              batched nodes ran (from the backend)
``dagserve_replicas``                         gauge ``{graph, node, state}``: ``target``,
                                              ``running`` and ``pending`` replicas
``dagserve_graph_ready``                      gauge ``{graph}``: 1 when every node runs its target
``dagserve_route_total``                      counter ``{graph, node, branch}``: branches chosen by
                                              ``switch`` and ``split`` nodes (a canary is visible)
``dagserve_node_skipped_total``               counter ``{graph, node}``: nodes an ``optional``
                                              skipped because they (or what they need) failed
============================================  ====================================================

Streams (generator nodes) have their own series: :mod:`dagserve.observe.stream_metrics`; multiplexed
nodes' model caches theirs: :mod:`dagserve.observe.model_metrics`; queued jobs too:
:mod:`dagserve.observe.job_metrics`.

Counters and histograms are updated after each request, on the App's event loop, in plain
dicts under one lock; they become Prometheus families when the registry is scraped. (With
``prometheus_client``'s own ``Counter`` and ``Histogram``, a lock per series and per bucket, the
observers cost ~10 µs per request of a 3-node graph; now ~5 µs.) Gauges are read from the App and
its backend when the registry is scraped, so rendering may block (``App.status()`` on Ray asks the Serve controller): call it from a thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from dagserve.observe.job_metrics import JobMetrics
from dagserve.observe.model_metrics import ModelFamilies
from dagserve.observe.stream_metrics import StreamMetrics, cumulative
from dagserve.observe.server_timing import OUTCOMES, failing_node, outcome_of, trace_observer
from dagserve.runtime.call_stats import LATENCY_BUCKETS, add, new_histogram, observe

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from dagserve.app import App
    from dagserve.compiler.plan import Plan
    from dagserve.runtime.executor import RequestContext

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "Metrics",
    "default_metrics",
    "instrument",
    "metrics_endpoint",
    "render_metrics",
]

log = logging.getLogger("dagserve.metrics")

Endpoint = Callable[["Request"], Awaitable["Response"]]

#: ``Content-Type`` of :func:`render_metrics`'s output.
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Batch sizes; powers of two, as batch limits usually are.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: Outcomes that count as a node's errors in status tables.
ERROR_OUTCOMES = frozenset({"node_error", "timeout", "overloaded"})


class Metrics:
    """The metrics of every App it instruments, in one :class:`prometheus_client.CollectorRegistry`.

    Most code uses the per-process instance (:func:`default_metrics`); tests make their own with a
    fresh registry. ``registry`` is public: register your own collectors there to serve them on
    the same ``/metrics``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._apps: list[App] = []
        # Series live in plain dicts, keyed by their label values; _RequestCollector turns them into
        # Prometheus families at scrape time. One lock (_series_lock) guards them all.
        self._series_lock = threading.Lock()
        self._requests: dict[tuple[str, ...], int] = {}  # (graph, outcome, protocol)
        self._request_latency: dict[tuple[str, ...], list[float]] = {}  # (graph,)
        self._node_requests: dict[tuple[str, ...], int] = {}  # (graph, node, outcome)
        self._node_latency: dict[tuple[str, ...], list[float]] = {}  # (graph, node)
        self._routes: dict[tuple[str, ...], int] = {}  # (graph, node, branch)
        self._skipped: dict[tuple[str, ...], int] = {}  # (graph, node)
        # (graph, node) -> [calls, errors]: cheap totals for status tables, without a scrape.
        self._counts: dict[tuple[str, str], list[int]] = {}
        self.registry.register(_RequestCollector(self))
        self.registry.register(_LiveCollector(self))
        self.streams = StreamMetrics()  # observe/stream_metrics.py
        self.registry.register(self.streams)
        self.registry.register(JobMetrics(self.apps))  # observe/job_metrics.py

    # -- wiring ------------------------------------------------------------------------------------
    def instrument(self, app: App) -> None:
        """Record ``app``'s requests from now on (idempotent); also logs each request's path to
        the ``dagserve.trace`` logger at DEBUG (:func:`~dagserve.observe.server_timing.trace_observer`)."""
        with self._lock:
            if any(a is app for a in self._apps):
                return
            self._apps.append(app)
        with self._series_lock:  # zero series exist from the start, so rate() works at once
            for outcome in OUTCOMES:
                self._requests.setdefault((app.name, outcome, "http"), 0)
        app.observers.append(_Observer(self))
        self.streams.hook(app)
        if trace_observer not in app.observers:  # request paths to "dagserve.trace" at DEBUG
            app.observers.append(trace_observer)

    def apps(self) -> list[App]:
        """Instrumented Apps still open (closed ones are dropped; their counters stay)."""
        with self._lock:
            self._apps = [a for a in self._apps if not a.closed]
            return list(self._apps)

    def node_counts(self, graph: str) -> dict[str, dict[str, int]]:
        """Per node of ``graph``: ``{"requests": calls, "errors": calls that failed there}``, the
        calls through handles included (blocking: on Ray it asks the replicas; call it from a thread)."""
        out: dict[str, dict[str, int]] = {}
        for (g, node), (calls, errors) in list(self._counts.items()):
            if g == graph:
                out[node] = {"requests": calls, "errors": errors}
        app = next((a for a in self.apps() if a.name == graph), None)
        for (node, outcome), h in (_handle_calls_of(app, {}) if app is not None else {}).items():
            n = int(sum(h[:-1]))
            into = out.setdefault(node, {"requests": 0, "errors": 0})
            into["requests"] += n
            if outcome in ERROR_OUTCOMES:
                into["errors"] += n
        return out

    def request_counts(self, graph: str) -> dict[str, int]:
        """Requests of ``graph`` since it was instrumented, by outcome (every outcome, zeros too;
        summed over any further labels of the series)."""
        out = dict.fromkeys(OUTCOMES, 0)
        with self._series_lock:
            for key, n in self._requests.items():
                if key[0] == graph and key[1] in out:
                    out[key[1]] += n
        return out

    def render(self) -> bytes:
        """The registry in the Prometheus text format (may block; see the module docstring)."""
        return generate_latest(self.registry)

    # -- recording ---------------------------------------------------------------------------------
    def _record(
        self,
        app: App,
        nodes: dict[str, str],
        series: dict[str, _NodeSeries],
        ctx: RequestContext,
        error: BaseException | None,
        seconds: float,
    ) -> None:
        graph = app.name
        outcome = outcome_of(error)
        culprit = _culprit_step(failing_node(error), ctx.timings, nodes) if error is not None else None
        # Nodes that failed under an ``optional`` get their outcome though the request went on.
        failed = _skipped_failures(ctx, nodes) if ctx.skipped else {}
        with self._series_lock:
            key: tuple[str, ...] = (graph, outcome, ctx.protocol)
            requests = self._requests
            requests[key] = requests.get(key, 0) + 1
            _observe(self._request_latency, (graph,), seconds)
            node_requests = self._node_requests
            for step, secs in ctx.timings.items():  # the graph's steps; handle calls: Backend.handle_calls
                s = series.get(step)
                if s is None:
                    s = series[step] = self._node_series(graph, nodes.get(step, step))
                if error is None and step not in failed:
                    key = s.ok_key
                elif error is None:
                    key = (graph, s.node, failed[step])
                    if failed[step] in ERROR_OUTCOMES:
                        s.counts[1] += 1
                else:
                    node_outcome = outcome if step == culprit else "aborted"
                    key = (graph, s.node, node_outcome)
                    if node_outcome in ERROR_OUTCOMES:
                        s.counts[1] += 1
                node_requests[key] = node_requests.get(key, 0) + 1
                h = s.latency
                observe(h, secs)
                s.counts[0] += 1
            for step, branch in ctx.route.items():
                key = (graph, step, branch)
                self._routes[key] = self._routes.get(key, 0) + 1
            for step in ctx.skipped:
                key = (graph, nodes.get(step, step))
                self._skipped[key] = self._skipped.get(key, 0) + 1

    def _node_series(self, graph: str, node: str) -> _NodeSeries:
        """Node ``node``'s latency histogram and totals (created now if new); hold ``_series_lock``."""
        latency = self._node_latency.get((graph, node))
        if latency is None:
            latency = self._node_latency[(graph, node)] = new_histogram()
        counts = self._counts.setdefault((graph, node), [0, 0])
        return _NodeSeries(graph, node, latency, counts)

    def _snapshot(self) -> tuple[Any, ...]:
        with self._series_lock:
            return (
                dict(self._requests),
                {k: list(v) for k, v in self._request_latency.items()},
                dict(self._node_requests),
                {k: list(v) for k, v in self._node_latency.items()},
                dict(self._routes),
                dict(self._skipped),
            )


def _observe(series: dict[tuple[str, ...], list[float]], key: tuple[str, ...], value: float) -> None:
    """One histogram observation (per-bucket counts, then +Inf, then the sum: runtime/call_stats.py)."""
    h = series.get(key)
    if h is None:
        h = series[key] = new_histogram()
    observe(h, value)


class _NodeSeries:
    """Where one node's calls are counted: found once per step, since these entries never move."""

    __slots__ = ("counts", "latency", "node", "ok_key")

    def __init__(self, graph: str, node: str, latency: list[float], counts: list[int]) -> None:
        self.node = node
        self.ok_key = (graph, node, "ok")  # the node_requests key of a successful call
        self.latency = latency  # the histogram in Metrics._node_latency
        self.counts = counts  # [calls, errors] in Metrics._counts


class _RequestCollector:
    """The request counters and latency histograms, as Prometheus families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[Metric, ...]:
        return (
            CounterMetricFamily(
                "dagserve_requests",
                "Requests served, by outcome and by the door they came in by (http, python, oip, grpc, openai, job ...).",
                labels=["graph", "outcome", "protocol"],
            ),
            HistogramMetricFamily(
                "dagserve_request_latency_seconds",
                "Whole-request latency, from the graph's input to its output.",
                labels=["graph"],
            ),
            CounterMetricFamily(
                "dagserve_node_requests",
                "Calls of each node, by outcome (aborted: the request failed at another node).",
                labels=["graph", "node", "outcome"],
            ),
            HistogramMetricFamily(
                "dagserve_node_latency_seconds",
                "Each node call's own time, from its inputs being ready to its result.",
                labels=["graph", "node"],
            ),
            CounterMetricFamily(
                "dagserve_route", "Branches chosen by switch and split nodes.", labels=["graph", "node", "branch"]
            ),
            CounterMetricFamily(
                "dagserve_node_skipped",
                "Nodes an optional skipped because they, or what they need, failed.",
                labels=["graph", "node"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        requests, request_latency, node_requests, node_latency, routes, skipped = self._metrics._snapshot()
        _add_handle_calls(self._metrics.apps(), node_requests, node_latency)
        req_f, req_lat_f, node_f, node_lat_f, route_f, skipped_f = self._families()
        for labels, value in requests.items():
            req_f.add_metric(list(labels), value)
        for labels, h in request_latency.items():
            req_lat_f.add_metric(list(labels), _cumulative(h), sum_value=h[-1])
        for labels, value in node_requests.items():
            node_f.add_metric(list(labels), value)
        for labels, h in node_latency.items():
            node_lat_f.add_metric(list(labels), _cumulative(h), sum_value=h[-1])
        for labels, value in routes.items():
            route_f.add_metric(list(labels), value)
        for labels, value in skipped.items():
            skipped_f.add_metric(list(labels), value)
        yield from (req_f, req_lat_f, node_f, node_lat_f, route_f, skipped_f)


def _add_handle_calls(
    apps: list[App], node_requests: dict[tuple[str, ...], int], node_latency: dict[tuple[str, ...], list[float]]
) -> None:
    """Add to the node series the calls nodes made through handles, one observation per call
    (``Backend.handle_calls``: made in this process or by replicas elsewhere), each under the graph
    of the request it served. Each call counts with its own outcome."""
    read: dict[int, dict[tuple[str, str, str], list[float]]] = {}  # per backend, once per scrape
    for app in apps:
        graph = app.name
        for (node, outcome), h in _handle_calls_of(app, read).items():
            key = (graph, node, outcome)
            node_requests[key] = node_requests.get(key, 0) + int(sum(h[:-1]))
            into = node_latency.get((graph, node))
            if into is None:
                node_latency[(graph, node)] = list(h)
            else:
                add(into, h)


def _handle_calls_of(app: App, read: dict[int, dict[tuple[str, str, str], list[float]]]) -> dict[tuple[str, str], list[float]]:
    """``(node, outcome) -> histogram`` of the calls through handles made for ``app``'s graph. The
    graphs deployed together share a backend: it is asked once per ``read`` (a cache by backend),
    and each graph takes its own calls. ``{}`` when the backend cannot say (logged)."""
    backend = app.backend
    calls = read.get(id(backend))
    if calls is None:
        try:
            calls = backend.handle_calls()
        except Exception as exc:  # noqa: BLE001 - a node being torn down must not break the whole scrape
            log.warning("Reading the handle calls of graph %r for metrics failed: %s", app.name, exc)
            calls = {}
        read[id(backend)] = calls
    graph = app.name
    return {(node, outcome): h for (g, node, outcome), h in calls.items() if g == graph}


def _cumulative(h: list[float]) -> list[tuple[str, float]]:
    return cumulative(h, LATENCY_BUCKETS)


class _Observer:
    """The App observer: maps step names to node names (cached per plan) and records."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._plan: Plan | None = None
        self._nodes: dict[str, str] = {}
        self._series: dict[str, _NodeSeries] = {}  # step name -> its node's series

    def __call__(self, app: App, ctx: RequestContext, error: BaseException | None, seconds: float) -> None:
        plan = app.plan
        if plan is not self._plan:  # scale/update replace the plan; step names stay the same
            self._nodes = {s.name: s.deployment for s in plan.steps if s.kind in ("call", "map") and s.deployment}
            self._series = {}
            self._plan = plan
        try:
            self._metrics._record(app, self._nodes, self._series, ctx, error, seconds)
        except Exception:  # pragma: no cover - metrics must never fail a request
            log.exception("Recording metrics for graph %r failed.", app.name)


def _culprit_step(blamed: str | None, timings: dict[str, float], nodes: dict[str, str]) -> str | None:
    """The step an error blames: errors name a step (NodeError, timeouts) or a node (overload)."""
    if blamed is None:
        return None
    if blamed in timings:
        return blamed
    for step in timings:
        if nodes.get(step) == blamed:
            return step
    return None


def _skipped_failures(ctx: RequestContext, nodes: dict[str, str]) -> dict[str, str]:
    """Step -> outcome of the nodes whose failure an ``optional`` absorbed."""
    out: dict[str, str] = {}
    for err in ctx.skipped.values():
        step = _culprit_step(failing_node(err), ctx.timings, nodes)
        if step is not None:
            out[step] = outcome_of(err)
    return out


class _LiveCollector:
    """Gauges read at scrape time: in-flight requests, replicas, readiness and batch sizes."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        # Without describe(), registering would call collect() (and App.status()) right away.
        return [*self._families(), *ModelFamilies().families()]

    def _families(
        self,
    ) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, HistogramMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily("dagserve_requests_in_flight", "Requests running now.", labels=["graph"]),
            GaugeMetricFamily(
                "dagserve_replicas", "Replicas per node: target, running and pending.", labels=["graph", "node", "state"]
            ),
            GaugeMetricFamily("dagserve_graph_ready", "1 when every node runs its target replicas.", labels=["graph"]),
            HistogramMetricFamily(
                "dagserve_batch_size", "Sizes of the batches that batched nodes ran.", labels=["graph", "node"]
            ),
            CounterMetricFamily(
                "dagserve_direct_transport_refusals",
                "Peers and connections the direct transport refused: side caller (the serving process's "
                "connections) or replica; reason other_user, bad_handshake, handshake_timeout, "
                "frame_too_large or frame_stalled.",
                labels=["graph", "node", "side", "reason"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        in_flight, replicas, ready, batch, refused = self._families()
        models = ModelFamilies()  # observe/model_metrics.py
        for app in self._metrics.apps():
            graph = app.name
            in_flight.add_metric([graph], app.in_flight)
            try:
                status = app.status()
                sizes = app.backend.batch_sizes()
                refusals = app.backend.direct_transport_refusals()
            except Exception as exc:  # a node being torn down must not break the whole scrape
                log.warning("Reading the state of graph %r for metrics failed: %s", graph, exc)
                continue
            ready.add_metric([graph], 1.0 if status.ready else 0.0)
            models.add(graph, status)
            for node in status.nodes.values():
                if node.inline:
                    continue
                replicas.add_metric([graph, node.name, "target"], node.target_replicas)
                replicas.add_metric([graph, node.name, "running"], node.running_replicas)
                replicas.add_metric([graph, node.name, "pending"], node.pending_replicas)
            for spec in app.plan.deployments:
                if spec.batched:
                    counts = sizes.get(spec.name, {})
                    batch.add_metric([graph, spec.name], _buckets(counts), sum_value=float(sum(s * n for s, n in counts.items())))
            for (node, side, reason), n in sorted(refusals.items()):
                refused.add_metric([graph, node, side, reason], n)
        yield in_flight
        yield replicas
        yield ready
        yield batch
        yield refused
        yield from models.families()


def _buckets(counts: dict[int, int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for le in BATCH_SIZE_BUCKETS:
        out.append((str(float(le)), float(sum(n for s, n in counts.items() if s <= le))))
    out.append(("+Inf", float(sum(counts.values()))))
    return out


_default: Metrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> Metrics:
    """The per-process :class:`Metrics`, created on first use with process and GC metrics too."""
    global _default
    with _default_lock:
        if _default is None:
            from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

            m = Metrics()
            ProcessCollector(registry=m.registry)
            PlatformCollector(registry=m.registry)
            GCCollector(registry=m.registry)
            _default = m
        return _default


def instrument(app: App, metrics: Metrics | None = None) -> Metrics:
    """Record ``app``'s requests in ``metrics`` (the per-process one by default); returns it."""
    m = metrics if metrics is not None else default_metrics()
    m.instrument(app)
    return m


def metrics_endpoint(apps: Mapping[str, App] | Iterable[App], metrics: Metrics | None = None) -> Endpoint:
    """A Starlette endpoint for ``GET /metrics`` serving ``metrics`` (the per-process registry by
    default), after instrumenting ``apps`` there. Rendering runs in a worker thread because the
    gauges ask the backends for their state."""
    m = metrics if metrics is not None else default_metrics()
    for app in apps.values() if isinstance(apps, Mapping) else apps:
        m.instrument(app)

    async def metrics_route(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import Response

        return Response(await run_in_threadpool(m.render), media_type=CONTENT_TYPE)

    return metrics_route


def render_metrics(metrics: Metrics | None = None) -> bytes:
    """``GET /metrics``'s body (``Content-Type``: :data:`CONTENT_TYPE`). Blocks; run it in a thread."""
    return (metrics if metrics is not None else default_metrics()).render()
