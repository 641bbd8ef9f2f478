"""The detector graph reused: called inside another graph, and deployed beside it.

``summary`` calls the ``detect_classify`` graph like a node (its nodes join ``summary``'s plan,
named ``detect_classify/...``); ``dagserve.deploy([graph, summary])`` serves both as one App,
where the nodes they share (the classifier, the annotator ...) are deployed once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import dagserve

from .graph import graph


@dagserve.node
def summarize(objects: list[dict[str, Any]]) -> dict[str, int]:
    """How many objects of each label."""
    return dict(sorted(Counter(o["label"] for o in objects).items()))


with dagserve.Input() as inp:
    found = graph(inp["image"])  # the detect_classify graph, as a step: its output, {"objects": ...}
    summary = dagserve.Graph({"title": inp["title"], "counts": summarize(found["objects"])}, name="summary")

# Both graphs in one picture (docs/img/together.svg): each graph's steps under its name, the
# nodes they share (one deployment each when deployed together) drawn once, with a call per graph.
with dagserve.Input() as both:
    together = dagserve.Graph(
        {"detect_classify": graph(both["detect_classify"]), "summary": summary(both["summary"])}, name="together"
    )
