"""Prometheus series of multiplexed nodes (docs/multiplexing.md), read from ``App.status()`` when
the registry is scraped (:class:`~dagserve.observe.metrics.Metrics` adds them to its live gauges).

==========================================  ======================================================
``dagserve_model_loads_total``              counter ``{graph, node}``: models loaded
``dagserve_model_load_seconds_total``       counter ``{graph, node}``: time spent loading them
``dagserve_model_evictions_total``          counter ``{graph, node}``: models evicted (released)
``dagserve_model_hits_total``               counter ``{graph, node}``: calls served without a load
``dagserve_model_misses_total``             counter ``{graph, node}``: calls that loaded their model
``dagserve_model_load_failures_total``      counter ``{graph, node}``: loads that raised
``dagserve_models_held``                    gauge ``{graph, node}``: models held now, all replicas
``dagserve_model_hit_ratio``                gauge ``{graph, node}``: hits / (hits + misses)
==========================================  ======================================================

Counters are summed over the node's live replicas (a replica that went away takes its counts
with it, as Serve's own replica metrics do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from dagserve.runtime.status import AppStatus

__all__ = ["ModelFamilies"]

_COUNTERS = (
    ("loads", "dagserve_model_loads", "Models a multiplexed node loaded."),
    ("load_seconds", "dagserve_model_load_seconds", "Seconds a multiplexed node spent loading models."),
    ("evictions", "dagserve_model_evictions", "Models a multiplexed node evicted (and released)."),
    ("hits", "dagserve_model_hits", "Calls served without a load of their own (loaded, or being loaded)."),
    ("misses", "dagserve_model_misses", "Calls that loaded their model."),
    ("load_failures", "dagserve_model_load_failures", "Model loads that raised."),
)


class ModelFamilies:
    """One scrape's model series: :meth:`add` each App's status, then :meth:`families`."""

    def __init__(self) -> None:
        labels = ["graph", "node"]
        self._counters = [(key, CounterMetricFamily(name, doc, labels=labels)) for key, name, doc in _COUNTERS]
        self._held = GaugeMetricFamily("dagserve_models_held", "Models multiplexed nodes hold now.", labels=labels)
        self._ratio = GaugeMetricFamily("dagserve_model_hit_ratio", "Model cache hits over calls.", labels=labels)

    def add(self, graph: str, status: AppStatus) -> None:
        for node in status.nodes.values():
            models = node.models
            if not models:
                continue
            for key, family in self._counters:
                family.add_metric([graph, node.name], float(models.get(key, 0)))
            self._held.add_metric([graph, node.name], float(sum(len(h) for h in models["replicas"].values())))
            if models.get("hit_ratio") is not None:
                self._ratio.add_metric([graph, node.name], float(models["hit_ratio"]))

    def families(self) -> list[Metric]:
        return [*(f for _, f in self._counters), self._held, self._ratio]
