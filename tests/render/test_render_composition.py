"""Diagrams of composition steps (issue 18): a map drawn as a stack of calls with an ``each``
edge, an optional as a dashed octagon saying what its readers get instead."""

from __future__ import annotations

import dagserve


@dagserve.node
def detect(n: int) -> list[int]:
    return list(range(n))


@dagserve.node(max_batch_size=8)
async def classify(crops: list[int]) -> list[str]:
    return [str(c) for c in crops]


@dagserve.node
def tags(n: int) -> list[str]:
    return []


def fallback(error: BaseException) -> list[str]:
    return ["untagged"]


def test_map_and_optional_are_drawn_distinctly() -> None:
    with dagserve.Input() as inp:
        labels = classify.map(detect(inp["n"]))
        graph = dagserve.Graph(
            {"labels": labels, "tags": dagserve.optional(tags(inp["n"]), default=[]), "more": dagserve.optional(tags(inp["n"]), on_error=fallback)},
            name="drawn",
        )
    dot = graph.to_dot()
    assert '"classify" [style="rounded,filled", fillcolor="#fef3c7", peripheries=2, label=<<b>classify</b><br/><font point-size="9" color="#64748b">map: one call per item<br/>' in dot
    assert '"detect" -> "classify" [label=<each>];' in dot
    assert '"optional(tags)" [shape=octagon, style="dashed,filled"' in dot
    assert "optional<br/>else []</font>" in dot
    assert "optional<br/>else on_error: fallback</font>" in dot
    assert '"tags" -> "optional(tags)" [label=<if it succeeds>, style=dashed];' in dot
    edges = {(e.source, e.target, e.label) for e in dagserve.compile(graph).edges}
    assert ("detect", "classify", "each") in edges and ("tags", "optional(tags)", "optional") in edges
