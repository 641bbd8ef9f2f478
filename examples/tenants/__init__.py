"""One digit classifier per customer behind one multiplexed node (docs/multiplexing.md).

Run it (trains every customer's model, classifies held-out images each with its customer's
model, prints accuracy per customer and what the replicas loaded)::

    python -m examples.tenants                   # in-process, local backend
    python -m examples.tenants --backend ray     # a private local Ray

Serve it over HTTP and call it, naming the customer in the payload or in a header::

    dagserve run examples.tenants:graph
    curl -s localhost:8000/ -H 'x-dagserve-model-id: acme' -d '{"pixels": [0, 0, 5, ...]}'

The graph lives in :mod:`examples.tenants.graph`; see that module's docstring for its shape.
"""

from __future__ import annotations

from .graph import CUSTOMERS, DigitRequest, graph, holdout

__all__ = ["CUSTOMERS", "DigitRequest", "graph", "holdout"]
