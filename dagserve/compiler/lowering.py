"""Lowering of the composition nodes (graph/composition.py): ``map`` and ``optional`` steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dagserve.compiler.plan import Edge, Ref, Step, refs_in
from dagserve.graph.composition import MapNode, OptionalNode

__all__ = ["composition_edges", "lower_composition"]


def lower_composition(
    i: int,
    n: MapNode | OptionalNode,
    deps: tuple[int, ...],
    name: str,
    template: Callable[[Any], Any],
    dep_of: dict[int, str],
) -> Step:
    """The step of a map node (a call per item of ``args[0]``) or an optional node."""
    if isinstance(n, MapNode):
        return Step(
            i,
            name,
            "map",
            deps,
            deployment=dep_of[id(n.target)],
            method=n.method,
            args=template(n.args),
            kwargs=template(n.kwargs),
            inline=n.target.node_options.inline,
        )
    return Step(i, name, "optional", deps, default=n.default, has_default=True, on_error=n.on_error)


def composition_edges(s: Step, steps: tuple[Step, ...]) -> list[Edge]:
    """A map step's inputs (``each`` for its list), an optional step's node."""
    if s.kind == "optional":
        return [Edge(steps[s.inputs[0]].name, s.name, "optional")]
    labels: dict[int, str] = {}
    for pos, t in enumerate(s.args):
        for r in refs_in(t):
            labels.setdefault(r, "each" if pos == 0 and isinstance(t, Ref) else f"arg{pos}")
    for k, t in s.kwargs.items():
        for r in refs_in(t):
            labels.setdefault(r, k)
    return [Edge(steps[r].name, s.name, label) for r, label in labels.items()]
