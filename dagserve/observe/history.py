"""A running App's recent past, for the live dashboard: figures sampled every 2 s for 15 minutes.

``history_for(app)`` installs one :class:`History` on an App (an :attr:`App.observers
<dagserve.App.observers>` entry that keeps each node's recent errors) and registers it with the
process's sampler thread, which every :data:`SAMPLE_INTERVAL_S` reads what the App already
knows: request counts by outcome and per node (:mod:`dagserve.observe.metrics`), latency over the
interval (:mod:`dagserve.observe.stats`), replicas (``App.status()``), calls held per node and
batch sizes (the backend), and the figures of :data:`FEATURES` (streams' items, and whatever
other features register)::

    history = history_for(app)
    history.snapshot(since=None)     # {"now", "nodes": {...}, "history": {...}, "errors": [...]}

Memory is fixed when a History is made: every series is a ring of :data:`HISTORY_POINTS` floats
(``array('d')``), so a graph of 10 nodes keeps ~300 KB whatever the traffic; each node's recent
errors are a deque of :data:`RECENT_ERRORS` small records (never payloads). The sampler stops when
no open App is left.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from array import array
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from dagserve.observe.metrics import Metrics, default_metrics
from dagserve.observe.stats import Latency, stats_for
from dagserve.observe.server_timing import OUTCOMES, failing_node, outcome_of

if TYPE_CHECKING:
    from dagserve.app import App
    from dagserve.runtime.executor import RequestContext

__all__ = [
    "FEATURES",
    "HISTORY_POINTS",
    "NODE_SERIES",
    "RECENT_ERRORS",
    "SAMPLE_INTERVAL_S",
    "FeatureSource",
    "History",
    "history_for",
]

log = logging.getLogger("dagserve.dashboard")

#: Seconds between two points of every series.
SAMPLE_INTERVAL_S = 2.0
#: Points kept per series: 15 minutes at one point every 2 s.
HISTORY_POINTS = 450
#: Recent errors kept per node (and for the graph as a whole).
RECENT_ERRORS = 20
#: The series kept per node, in this order.
NODE_SERIES = ("calls_per_s", "errors_per_s", "p50_s", "p99_s", "running", "target", "in_flight")

#: A feature's figures per node: ``source(app) -> {node: {figure: number or text}}``, the node
#: ``""`` for the graph as a whole. Features built beside the dashboard (multiplexed models,
#: queued jobs...) add theirs to :data:`FEATURES` under their name; the dashboard shows them in
#: each node's ``features[name]`` (and the graph's ``features[name]``).
FeatureSource = Callable[["App", Metrics], Mapping[str, Mapping[str, Any]]]


def _stream_figures(app: App, metrics: Metrics) -> dict[str, dict[str, Any]]:
    return metrics.streams.figures(app.name)


#: Feature name -> where its figures come from (read at every sample, from the sampler thread).
FEATURES: dict[str, FeatureSource] = {"stream": _stream_figures}

_NAN = float("nan")


class _Ring:
    """A fixed ring of float series sharing one time axis; memory is allocated once."""

    def __init__(self, size: int, names: list[str]) -> None:
        self.size = size
        self.count = 0  # points written so far (the newest is at (count - 1) % size)
        self.times = array("d", [0.0] * size)
        self.series = {name: array("d", [_NAN] * size) for name in names}

    def append(self, t: float, values: Mapping[str, float | None]) -> None:
        i = self.count % self.size
        self.times[i] = t
        for name, series in self.series.items():
            value = values.get(name)
            series[i] = _NAN if value is None else float(value)
        self.count += 1

    def since(self, t: float | None) -> tuple[list[float], dict[str, list[float | None]]]:
        """The points newer than ``t`` (all when ``None``), oldest first; NaN becomes ``None``."""
        n = min(self.count, self.size)
        start = self.count - n
        idx = [j % self.size for j in range(start, self.count)]
        if t is not None:
            idx = [i for i in idx if self.times[i] > t]
        times = [self.times[i] for i in idx]
        return times, {name: [None if math.isnan(s[i]) else s[i] for i in idx] for name, s in self.series.items()}

    def nbytes(self) -> int:
        return sum(a.itemsize * len(a) for a in (self.times, *self.series.values()))


class History:
    """The recent past of one App: sampled figures and recent errors (see the module docstring).

    An App observer: called after each request, it keeps the request's error, if any, with its
    request id, outcome and type (never its payload). :meth:`sample` is called by the sampler
    thread; :meth:`snapshot` by the dashboard's JSON endpoint. Both are safe across threads.
    """

    def __init__(self, app: App, metrics: Metrics | None = None, *, points: int = HISTORY_POINTS) -> None:
        self.app = app
        self.metrics = metrics if metrics is not None else default_metrics()
        self.metrics.instrument(app)
        self.stats = stats_for(app)
        self._lock = threading.Lock()
        names = [f"requests:{o}" for o in OUTCOMES]
        self._nodes = [spec.name for spec in app.plan.deployments]
        names += [f"{node}:{s}" for node in self._nodes for s in NODE_SERIES]
        self._ring = _Ring(points, names)
        self._errors: dict[str, collections.deque[dict[str, Any]]] = {}
        self._latest: dict[str, Any] = {}
        self._last: tuple[float, dict[str, int], dict[str, dict[str, int]], dict[str, dict[int, int]]] | None = None

    # -- the observer ------------------------------------------------------------------------------
    def __call__(self, app: App, ctx: RequestContext, error: BaseException | None, seconds: float) -> None:
        if error is None:
            return
        blamed = failing_node(error)
        node = self._node_of(app, blamed) if blamed is not None else ""
        record = {
            "time": time.time(),
            "request_id": ctx.request_id,
            "outcome": outcome_of(error),
            "type": getattr(error, "error_type", None) or type(error).__name__,
            "status": getattr(error, "status_code", None),
            "node": blamed,
        }
        with self._lock:
            errors = self._errors.get(node)
            if errors is None:
                if len(self._errors) > len(self._nodes):  # blamed names are bounded by the graph's
                    node = ""
                errors = self._errors.setdefault(node, collections.deque(maxlen=RECENT_ERRORS))
            errors.append(record)

    @staticmethod
    def _node_of(app: App, blamed: str) -> str:
        for step in app.plan.steps:
            if step.name == blamed:
                return step.deployment or blamed
        return blamed

    # -- sampling ----------------------------------------------------------------------------------
    def sample(self) -> None:
        """Add one point to every series (the rates since the previous call); blocking (on Ray,
        ``App.status()`` asks the Serve controller), so it runs on the sampler thread."""
        app = self.app
        now = time.monotonic()
        requests = self.metrics.request_counts(app.name)
        counts = self.metrics.node_counts(app.name)
        # Charts: the calls of this interval; cards: the recent window (a minute), steadier to read.
        interval = self.stats.deployments(app.plan, since=self._last[0] if self._last else None)
        window = self.stats.deployments(app.plan)
        status = self._read(app.status, None)
        batches = self._read(app.backend.batch_sizes, {})
        ongoing = self._read(app.backend.ongoing, {})
        values: dict[str, float | None] = {}
        nodes: dict[str, dict[str, Any]] = {}
        last = self._last
        dt = now - last[0] if last else 0.0
        for outcome, n in requests.items():
            values[f"requests:{outcome}"] = (n - last[1].get(outcome, 0)) / dt if last and dt > 0 else None
        for name in self._nodes:
            node = nodes[name] = self._node_figures(name, counts, window.get(name), status, batches, ongoing, last, dt)
            lat = interval.get(name)
            for s in NODE_SERIES:
                values[f"{name}:{s}"] = node.get(s)
            values[f"{name}:p50_s"] = lat.p50_s if lat else None
            values[f"{name}:p99_s"] = lat.p99_s if lat else None
        features = self._features()
        for name, node in nodes.items():
            node["features"] = {feature: figures[name] for feature, figures in features.items() if name in figures}
        latest = {
            "ready": status.ready if status else False,
            "backend": status.backend if status else app.backend.name,
            "in_flight": app.in_flight,
            "requests": requests,
            "streams_cancelled": self.metrics.streams.cancelled(app.name) if app.streams else None,
            # A feature's figures of the graph as a whole (a jobs queue's depth) come under the node "".
            "features": {feature: figures[""] for feature, figures in features.items() if "" in figures},
            "nodes": nodes,
        }
        with self._lock:
            if last is not None:
                self._ring.append(time.time(), values)
            self._latest = latest
            self._last = (now, requests, counts, batches)

    def _read(self, read: Callable[[], Any], default: Any) -> Any:
        """What ``read`` answers, or ``default`` this time (a node being torn down, an App closing)."""
        try:
            return read()
        except Exception as exc:
            log.debug("reading the state of graph %r while sampling failed: %s", self.app.name, exc)
            return default

    def _node_figures(
        self,
        name: str,
        counts: dict[str, dict[str, int]],
        lat: Latency | None,
        status: Any,
        batches: dict[str, dict[int, int]],
        ongoing: dict[str, int],
        last: Any,
        dt: float,
    ) -> dict[str, Any]:
        count = counts.get(name, {"requests": 0, "errors": 0})
        before = last[2].get(name, {"requests": 0, "errors": 0}) if last else None
        out: dict[str, Any] = {
            "calls": count["requests"],
            "errors": count["errors"],
            "calls_per_s": (count["requests"] - before["requests"]) / dt if before is not None and dt > 0 else None,
            "errors_per_s": (count["errors"] - before["errors"]) / dt if before is not None and dt > 0 else None,
            "p50_s": lat.p50_s if lat else None,  # over the recent window (stats.DEFAULT_WINDOW_S)
            "p99_s": lat.p99_s if lat else None,
            "in_flight": ongoing.get(name),
        }
        node = status.nodes.get(name) if status else None
        if node is not None:
            out.update(
                kind=node.kind,
                inline=node.inline,
                state=node.state,
                running=node.running_replicas,
                target=node.target_replicas,
                pending=node.pending_replicas,
                pending_reason=node.pending_reason,
                message=node.message,
                transport=node.transport,
                options=node.options,
            )
        sizes = batches.get(name)
        if sizes:
            earlier = last[3].get(name, {}) if last else {}
            new = {s: n - earlier.get(s, 0) for s, n in sizes.items() if n > earlier.get(s, 0)}
            total = sum(sizes.values())
            out["batch"] = {
                "batches": total,
                "mean": sum(s * n for s, n in sizes.items()) / total,
                "max": max(sizes),
                "recent_mean": sum(s * n for s, n in new.items()) / sum(new.values()) if new else None,
            }
        return out

    def _features(self) -> dict[str, Mapping[str, Mapping[str, Any]]]:
        out: dict[str, Mapping[str, Mapping[str, Any]]] = {}
        for feature, source in list(FEATURES.items()):
            try:
                out[feature] = source(self.app, self.metrics)
            except Exception:  # one feature's bug must not blank the dashboard
                log.exception("dashboard figures of %r failed for graph %r", feature, self.app.name)
        return out

    # -- reading -----------------------------------------------------------------------------------
    def snapshot(self, since: float | None = None) -> dict[str, Any]:
        """The latest figures, the points newer than ``since`` (a ``time.time()`` a previous
        snapshot gave as ``now``; all points when ``None``) and the recent errors."""
        with self._lock:
            times, series = self._ring.since(since)
            # No newer point: the next point's time will be later than now (points are added under this lock).
            now = times[-1] if times else since if since is not None else time.time()
            latest = dict(self._latest)
            errors = {node: list(d) for node, d in self._errors.items()}
        nodes = {name: dict(figures) for name, figures in latest.pop("nodes", {}).items()}
        for name, node in nodes.items():
            node["recent_errors"] = errors.get(name, [])
        per_node = {
            name: {s: series[f"{name}:{s}"] for s in NODE_SERIES} for name in self._nodes
        }
        return {
            **latest,
            "now": now,
            "latency_window_s": self.stats.window_s,
            "nodes": nodes,
            "recent_errors": errors.get("", []),
            "history": {
                "interval_s": SAMPLE_INTERVAL_S,
                "points": self._ring.size,
                "t": times,
                "requests": {o: series[f"requests:{o}"] for o in OUTCOMES},
                "nodes": per_node,
            },
        }

    def latest_ready(self) -> bool:
        """Whether every node ran its target replicas at the last sample."""
        with self._lock:
            return bool(self._latest.get("ready"))

    def nbytes(self) -> int:
        """Bytes held by the series (fixed at creation)."""
        return self._ring.nbytes()

    def __repr__(self) -> str:
        return f"<History graph={self.app.name!r} points={min(self._ring.count, self._ring.size)}>"


class _Sampler:
    """One daemon thread per process sampling every registered History; it ends when none is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._histories: list[History] = []
        self._thread: threading.Thread | None = None

    def add(self, history: History) -> None:
        history.sample()  # the baseline: the first point comes one interval later
        with self._lock:
            self._histories.append(history)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dagserve-dashboard", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(SAMPLE_INTERVAL_S)
            with self._lock:
                self._histories = [h for h in self._histories if not h.app.closed]
                histories = list(self._histories)
                if not histories:
                    self._thread = None
                    return
            for history in histories:
                try:
                    history.sample()
                except Exception:
                    if not history.app.closed:
                        log.exception("sampling graph %r for the dashboard failed", history.app.name)


_sampler = _Sampler()
_install_lock = threading.Lock()


def history_for(app: App, metrics: Metrics | None = None) -> History:
    """The App's :class:`History`, made, installed as an observer and sampled from now on at first use."""
    with _install_lock:
        for observer in app.observers:
            if isinstance(observer, History):
                return observer
        history = History(app, metrics)
        app.observers.append(history)
    _sampler.add(history)
    return history
