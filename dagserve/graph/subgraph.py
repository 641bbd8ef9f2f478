"""Graphs inside graphs (issue 18, item 10): ``outer = post(review_graph(inp["review"]))``.

Calling a :class:`~dagserve.Graph` with a node copies the graph's nodes into the graph being
built, its ``Input`` replaced by that node; the result is the inner graph's output (a node, or a
dict/list of nodes, as the inner graph returns). The copies call the same function nodes and
model instances, so a model used inside and outside is one deployment. Each copy remembers the
graph it came from (:func:`scope_of`): the compiler names its step ``"review/Sentiment"``, errors
name it so, and diagrams draw the graph as a labelled cluster.
"""

from __future__ import annotations

import weakref
from typing import Any

from dagserve._errors import GraphError
from dagserve.graph.leaves import map_leaves
from dagserve.graph.nodes import Input, Node

__all__ = ["call_graph", "scope_of"]

# Copied node -> the path of graphs it was copied from ("review", "outer/review").
_scopes: weakref.WeakKeyDictionary[Node, str] = weakref.WeakKeyDictionary()


def scope_of(node: Node) -> str | None:
    """The graph (path) ``node`` was copied from by calling a graph, or ``None``."""
    return _scopes.get(node)


def call_graph(graph: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``graph(payload)`` (``graph`` a :class:`~dagserve.Graph`, which imports this module): the
    graph's nodes copied onto ``payload``; returns the copied output."""
    if kwargs or len(args) != 1:
        raise GraphError(
            f"Graph {graph.name!r} is called with one argument, its payload (what its Input stands for), "
            f"got {len(args)} positional and {len(kwargs)} keyword."
        )
    payload = args[0]
    if not isinstance(payload, Node):
        raise GraphError(
            f"Graph {graph.name!r} got {payload!r} as its payload; call it with a node of the graph being "
            "built, e.g. inner(inp['field']) or inner(step(inp))."
        )
    copies: dict[int, Any] = {}
    for n in graph.nodes():
        if isinstance(n, Input):
            copies[id(n)] = payload
            continue
        clone = object.__new__(type(n))
        for name in _slots(type(n)):
            if hasattr(n, name):
                object.__setattr__(clone, name, _substitute(getattr(n, name), copies))
        for name, value in getattr(n, "__dict__", {}).items():  # a node kind without __slots__
            object.__setattr__(clone, name, _substitute(value, copies))
        inner = _scopes.get(n)
        _scopes[clone] = graph.name if inner is None else f"{graph.name}/{inner}"
        copies[id(n)] = clone
    return _substitute(graph.output, copies)


def _slots(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = vars(klass).get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__weakref__", "__dict__") and name not in names:
                names.append(name)
    return names


def _substitute(value: Any, copies: dict[int, Any]) -> Any:
    return map_leaves(value, lambda v: copies.get(id(v), v) if isinstance(v, Node) else v)
