"""The job queue's series (docs/jobs.md), read from the Apps' queues when the registry is scraped.

============================================  ====================================================
``dagserve_jobs_queued``                      gauge ``{graph}``: jobs waiting (the queue depth; in
                                              a shared Redis store, every server's)
``dagserve_jobs_running``                     gauge ``{graph}``: jobs running (every server's)
``dagserve_jobs_oldest_age_seconds``          gauge ``{graph}``: how long the oldest queued job has
                                              waited (0 when none waits)
``dagserve_jobs_total``                       counter ``{graph, outcome}``: jobs this process
                                              finished: succeeded, failed, cancelled, and requeued
                                              (an overloaded graph sent one back)
``dagserve_job_run_seconds``                  histogram ``{graph}``: run time of each job here
============================================  ====================================================

A queue not used yet (no job submitted, no job route called) has no series: scraping never opens
a store. Reading the gauges asks the store (SQLite or Redis): the registry is scraped on a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from dagserve.jobs.queue import RUN_SECONDS_BUCKETS
from dagserve.observe.stream_metrics import cumulative

if TYPE_CHECKING:
    from dagserve.app import App
    from dagserve.jobs import JobQueue

__all__ = ["JobMetrics"]

log = logging.getLogger("dagserve.metrics")


class JobMetrics:
    """A collector of the jobs of the Apps ``apps()`` gives (those a :class:`Metrics` instruments)."""

    def __init__(self, apps: Callable[[], list[App]]) -> None:
        self._apps = apps

    def describe(self) -> Iterable[Metric]:
        return list(self._families())  # without describe(), registering would collect at once

    def _families(self) -> tuple[Metric, ...]:
        return (
            GaugeMetricFamily("dagserve_jobs_queued", "Jobs waiting in the queue.", labels=["graph"]),
            GaugeMetricFamily("dagserve_jobs_running", "Jobs running.", labels=["graph"]),
            GaugeMetricFamily(
                "dagserve_jobs_oldest_age_seconds", "How long the oldest queued job has waited.", labels=["graph"]
            ),
            CounterMetricFamily("dagserve_jobs", "Jobs this process finished, by outcome.", labels=["graph", "outcome"]),
            HistogramMetricFamily("dagserve_job_run_seconds", "Run time of each job.", labels=["graph"]),
        )

    def collect(self) -> Iterator[Metric]:
        queued, running, oldest, total, run_time = self._families()
        queues: list[JobQueue] = []
        for app in self._apps():
            queue = app.job_queue_in_use()
            if queue is None:
                continue
            try:
                stats = queue.stats([app.name])
            except Exception as exc:  # a store that cannot answer must not break the whole scrape
                log.warning("Reading the job queue of graph %r for metrics failed: %s", app.name, exc)
            else:
                queued.add_metric([app.name], stats["queued"])  # type: ignore[attr-defined]
                running.add_metric([app.name], stats["running"])  # type: ignore[attr-defined]
                oldest.add_metric([app.name], stats["oldest_age_s"] or 0.0)  # type: ignore[attr-defined]
            if all(queue is not q for q in queues):
                queues.append(queue)
        for queue in queues:  # the counters of a queue several graphs share, once
            outcomes, runs = queue.counters.snapshot()
            for (graph, outcome), n in outcomes.items():
                total.add_metric([graph, outcome], n)  # type: ignore[attr-defined]
            for graph, h in runs.items():
                run_time.add_metric([graph], cumulative(h, RUN_SECONDS_BUCKETS), sum_value=h[-1])  # type: ignore[attr-defined]
        yield from (queued, running, oldest, total, run_time)
