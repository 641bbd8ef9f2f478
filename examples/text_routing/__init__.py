"""Text pipeline with routing: language detection, a switch to per-language models, a 10 % canary.

Run it (trains the small models, classifies reviews in four languages, then sends 1,000 English
reviews and counts which model version answered)::

    python -m examples.text_routing

Serve it over HTTP and call it::

    dagserve run examples.text_routing:graph
    python -m examples.text_routing --url http://127.0.0.1:8000
    curl -s 127.0.0.1:8000/metrics | grep dagserve_route_total    # the split, counted

The last command shows the route counters: ``node="english_canary"`` with ``branch="stable"`` and
``branch="canary"``, and ``node="language"`` with one ``branch`` per detected language.

The graph lives in :mod:`examples.text_routing.graph`.
"""

from __future__ import annotations

from .graph import CANARY_SHARE, Review, graph

__all__ = ["CANARY_SHARE", "Review", "graph"]
