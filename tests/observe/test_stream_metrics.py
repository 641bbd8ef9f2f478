"""Stream metrics (observe/stream_metrics.py): first item and gaps per node, items, cancellations."""

from __future__ import annotations

from typing import Any

import dagserve
from dagserve.observe.metrics import Metrics, render_metrics

from .. import stream_graphs as sg
from .test_metrics import samples


def test_stream_series(tmp_path: Any) -> None:
    metrics = Metrics()
    with dagserve.deploy(sg.chain, backend="local") as app:
        metrics.instrument(app)
        assert list(app.stream({"n": 4})) == [0, 1, 2, 3]
        it = app.stream({"n": 100})
        next(it)
        it.close()  # the reader stopped: a cancelled stream
        m = samples(render_metrics(metrics).decode())
    for node in ("produce", "relay"):
        labels = frozenset({"graph": "chain", "node": node}.items())
        assert m[("dagserve_stream_first_item_seconds_count", labels)] == 2
        assert m[("dagserve_stream_item_gap_seconds_count", labels)] == 3
        assert m[("dagserve_stream_items_total", labels)] == 5
    assert m[("dagserve_streams_cancelled_total", frozenset({"graph": "chain"}.items()))] == 1
    assert m[("dagserve_requests_total", frozenset({"graph": "chain", "outcome": "cancelled", "protocol": "python"}.items()))] == 1
