"""Recent per-node latencies of a running App, for live diagrams and status tables.

``stats_for(app)`` installs one :class:`LatencyStats` as an :attr:`App.observers
<dagserve.App.observers>` entry (once per App) and returns it. After every request it records
each step's time from ``ctx.timings`` and the request's own time; readers ask for p50/p99 over a
recent window::

    stats = stats_for(app)
    app.call({"text": "hello"})
    stats.node("clean")            # Latency(count=1, errors=0, p50_s=..., p99_s=..., mean_s=...)

Only the last ``max_samples`` samples per node within the last ``window_s`` seconds count, so
memory is bounded and the numbers follow the current traffic.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagserve._errors import DagserveError

if TYPE_CHECKING:
    from dagserve.app import App
    from dagserve.compiler.plan import Plan
    from dagserve.runtime.executor import RequestContext

__all__ = ["DEFAULT_MAX_SAMPLES", "DEFAULT_WINDOW_S", "Latency", "LatencyStats", "stats_for"]

DEFAULT_WINDOW_S = 60.0
DEFAULT_MAX_SAMPLES = 1024


@dataclass(frozen=True)
class Latency:
    """Latency of one node (or of whole requests) over the recent window.

    ``count`` samples in the window, ``errors`` of them failed; ``rate_per_s`` is samples per
    second over the span the window covers.
    """

    count: int
    errors: int
    p50_s: float
    p99_s: float
    mean_s: float
    max_s: float
    rate_per_s: float


class _Series:
    """Samples ``(time, seconds, failed)`` of one node, oldest first, bounded in size."""

    __slots__ = ("samples",)

    def __init__(self, max_samples: int) -> None:
        self.samples: collections.deque[tuple[float, float, bool]] = collections.deque(maxlen=max_samples)


class LatencyStats:
    """A rolling recorder of per-node latencies; an App observer (see :func:`stats_for`).

    Calling it with ``(app, ctx, error, seconds)`` records one request. It is safe to read from
    other threads while requests are recorded on the App's loop.
    """

    def __init__(
        self,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0 or max_samples < 1:
            raise DagserveError(
                f"LatencyStats needs window_s > 0 and max_samples >= 1, got window_s={window_s!r} and "
                f"max_samples={max_samples!r}."
            )
        self.window_s = window_s
        self.max_samples = max_samples
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._nodes: dict[str, _Series] = {}
        self._requests = _Series(max_samples)

    # -- recording -----------------------------------------------------------------------------
    def __call__(self, app: App, ctx: RequestContext, error: BaseException | None, seconds: float) -> None:
        # The App calls observers after every request, on its event loop: keep this cheap.
        failed_node = getattr(error, "node", None) if error is not None else None
        self.observe(ctx.shown_timings(), seconds, failed=error is not None, failed_node=failed_node)

    def observe(
        self,
        timings: Mapping[str, float],
        request_s: float | None = None,
        *,
        failed: bool = False,
        failed_node: str | None = None,
    ) -> None:
        """Record one request: ``timings`` maps step name -> seconds; ``request_s`` is its total."""
        now = self._clock()
        with self._lock:
            for name, seconds in timings.items():
                series = self._nodes.get(name)
                if series is None:
                    series = self._nodes[name] = _Series(self.max_samples)
                series.samples.append((now, seconds, name == failed_node))
            if request_s is not None:
                self._requests.samples.append((now, request_s, failed))

    def clear(self) -> None:
        """Forget every sample."""
        with self._lock:
            self._nodes.clear()
            self._requests.samples.clear()
            self._started = self._clock()

    # -- reading -------------------------------------------------------------------------------
    def node(self, name: str) -> Latency | None:
        """The step ``name``'s latency over the window, or None when it has no recent samples."""
        now = self._clock()
        with self._lock:
            series = self._nodes.get(name)
            return None if series is None else self._summarise([series], now)

    def nodes(self) -> dict[str, Latency]:
        """Every step with recent samples, by step name (sorted)."""
        now = self._clock()
        with self._lock:
            out = {name: self._summarise([s], now) for name, s in self._nodes.items()}
        return {name: lat for name, lat in sorted(out.items()) if lat is not None}

    def requests(self) -> Latency | None:
        """Whole requests over the window (``errors`` counts failed requests)."""
        now = self._clock()
        with self._lock:
            return self._summarise([self._requests], now)

    def deployments(self, plan: Plan, *, since: float | None = None) -> dict[str, Latency]:
        """Latency per deployment of ``plan``: the samples of all its steps together.

        A model instance called in several places (or through several methods) is one deployment
        with several steps; status tables list deployments, so they read this. ``since`` (a time
        of this recorder's clock, ``time.monotonic()`` by default) keeps only later samples: the
        dashboard's history asks for the interval since its last point.
        """
        steps: dict[str, list[str]] = {}
        for s in plan.steps:
            if s.kind in ("call", "map") and s.deployment is not None:
                steps.setdefault(s.deployment, []).append(s.name)
        now = self._clock()
        out: dict[str, Latency] = {}
        with self._lock:
            for dep, names in steps.items():
                lat = self._summarise([self._nodes[n] for n in names if n in self._nodes], now, since)
                if lat is not None:
                    out[dep] = lat
        return out

    def _summarise(self, series: Iterable[_Series], now: float, since: float | None = None) -> Latency | None:
        cutoff = now - self.window_s
        newer = cutoff if since is None else max(cutoff, since)
        values: list[float] = []
        errors = 0
        oldest = now
        full = False
        for s in series:
            samples = s.samples
            while samples and samples[0][0] < cutoff:
                samples.popleft()
            if not samples:
                continue
            full = full or len(samples) == samples.maxlen
            for at, seconds, failed in samples:
                if at >= newer:
                    oldest = min(oldest, at)
                    values.append(seconds)
                    errors += failed
        if not values:
            return None
        values.sort()
        # A full buffer covers only the span since its oldest sample; otherwise the whole window
        # (or the time since recording started, if shorter) is the denominator.
        span = now - oldest if full else min(self.window_s, now - self._started, now - newer)
        return Latency(
            count=len(values),
            errors=errors,
            p50_s=percentile(values, 0.50),
            p99_s=percentile(values, 0.99),
            mean_s=sum(values) / len(values),
            max_s=values[-1],
            rate_per_s=len(values) / span if span > 0 else 0.0,
        )

    def __repr__(self) -> str:
        return f"<LatencyStats window_s={self.window_s:g} nodes={len(self._nodes)}>"


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0 < q <= 1) of already sorted values."""
    k = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[k - 1]


_install_lock = threading.Lock()


def stats_for(app: App, **options: Any) -> LatencyStats:
    """The App's :class:`LatencyStats`, installed as an observer on first use.

    Requests made before the first call are not counted, so call it when the App starts if the
    numbers should cover everything. ``options`` (``window_s``, ``max_samples``) apply only when
    this call installs the recorder.
    """
    with _install_lock:
        for observer in app.observers:
            if isinstance(observer, LatencyStats):
                return observer
        stats = LatencyStats(**options)
        app.observers.append(stats)
        return stats
