"""Composition nodes: ``map`` over a list known only at run time, and ``optional`` branches; and
the bookkeeping of which graphs are built on which ``Input`` (several graphs may share one).

``dagserve.map(node, items)`` (or ``node.map(items)``) calls ``node`` once per item of the list
``items`` holds at run time, concurrently (a batched node gets them in batches), and gives the
list of results in order. ``dagserve.optional(node, default=None, on_error=None)`` is ``node``'s
value, or ``default`` (``on_error(error)``) when ``node`` or anything it needs fails.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

from dagserve._errors import GraphError
from dagserve.graph import nodes as _nodes
from dagserve.graph.loaders import loader_of
from dagserve.graph.nodes import (
    CallNode,
    Chain,
    FunctionNode,
    Input,
    ModelInstance,
    ModelMethod,
    Node,
    Stage,
    _check_call,
    nodes_in,
    vars_chain,
)

__all__ = ["MapNode", "OptionalNode", "graphs_on", "map", "optional", "reachable_on", "register_graph", "start"]


class MapNode(CallNode):
    """``node`` applied to every item of ``items`` (``args[0]``); the other arguments are fixed."""

    __slots__ = ()

    @property
    def items(self) -> Node:
        return self.args[0]  # type: ignore[no-any-return]

    def describe(self) -> str:
        return f"map({self.target.call_label(self.method)}, {self.items.describe()})"


class OptionalNode(Node):
    """``node``'s value, or ``default`` / ``on_error(error)`` when it (or anything it needs) fails."""

    __slots__ = ("default", "node", "on_error")

    def __init__(self, node: Node, default: Any, on_error: Callable[[BaseException], Any] | None) -> None:
        super().__init__()
        self.node = node
        self.default = default
        self.on_error = on_error

    def dependencies(self) -> tuple[Node, ...]:
        return (self.node,)

    def describe(self) -> str:
        return f"optional({self.node.describe()})"


def map(node: Any, items: Any, *args: Any, **kwargs: Any) -> MapNode:  # noqa: A001 - the public name
    """Call ``node`` on every item of the list ``items`` produces at run time::

        crops = detect(inp["image"])                 # a list, as long as the image needs
        labels = dagserve.map(classify, crops)       # classify(crop) for each crop, in order
        labels = classifier.map(crops)               # the same on a model instance (or method)

    ``node`` is a function node, a model instance or a method (``model.predict``); ``args`` and
    ``kwargs`` are passed to every call after the item, the same for each (constants or nodes).
    Items run concurrently, each a call to the node's deployment, so a batched node gets them in
    batches; the result keeps their order and an empty list gives an empty list. A failing item
    fails the request, naming the node and the item's index.
    """
    if isinstance(node, ModelInstance):
        if "__call__" not in vars_chain(node.model.cls):
            raise GraphError(
                f"map({node.name}, ...): model {node.name!r} defines no __call__; map one of its methods, "
                f"e.g. dagserve.map({node.name.lower()}.predict, items)."
            )
        target, method = node, "__call__"
    elif isinstance(node, ModelMethod):
        target, method = node.instance, node.method
        target._method(method)
    elif isinstance(node, FunctionNode):
        target, method = node, "__call__"
    else:
        raise GraphError(
            f"dagserve.map(node, items) maps a function node, a model instance or a method over a list, "
            f"got {node!r}."
        )
    label = target.call_label(method)
    if isinstance(target, ModelInstance) and loader_of(target.model.cls) is not None:
        raise GraphError(
            f"dagserve.map({label}, ...): {label!r} is multiplexed (a @dagserve.multiplexed loader), and map "
            "does not carry a model id per item; call the node once on the whole list with model_id=."
        )
    if not isinstance(items, Node):
        raise GraphError(
            f"dagserve.map({label}, items) maps over a list a node produces at run time, got {items!r}; "
            f"for a list known now, call the node on each item while building: [{label}(x) for x in items]."
        )
    fn = target.fn if isinstance(target, FunctionNode) else target._method(method)
    _check_call(label, inspect.signature(fn), (items, *args), kwargs, target.node_options, bound=isinstance(target, ModelInstance))
    return MapNode(target, method, (items, *args), kwargs)


def optional(node: Any, default: Any = None, on_error: Callable[[BaseException], Any] | None = None) -> OptionalNode:
    """``node``'s value, or ``default`` when ``node`` or anything it needs fails (KServe's soft
    dependencies)::

        tags = dagserve.optional(tagger(text), default=[])
        out = {"label": classify(text), "tags": tags}   # a failing tagger leaves tags == []

    A node's exception, an :class:`~dagserve.HTTPError`, a node's ``timeout_s`` or a switch with
    no matching case make its readers receive ``default``, or ``on_error(error)`` when
    ``on_error`` is given; the request goes on, and names the skipped node in its
    ``x-dagserve-skipped`` header. The request's own deadline and a client's disconnect still end
    it, and readers of ``node`` itself (not through ``optional``) fail as usual.
    """
    if not isinstance(node, Node):
        raise GraphError(f"dagserve.optional(node, ...) takes a graph node, such as tagger(text), got {node!r}.")
    if any(True for _ in nodes_in(default)):
        raise GraphError(
            f"optional({node.describe()}, default=...) takes a constant default, not a graph node; "
            "choose between nodes with dagserve.switch."
        )
    if on_error is not None and not callable(on_error):
        raise GraphError(f"optional(..., on_error=...) takes a function of the error, got {on_error!r}.")
    return OptionalNode(node, default, on_error)


def _map_stage(stage: Stage, items: Any, *args: Any, **kwargs: Any) -> Node:
    """``stage.map(items)``; a model whose class defines ``map`` keeps its own method."""
    if isinstance(stage, ModelInstance) and "map" in vars_chain(stage.model.cls):
        return ModelMethod(stage, "map")(items, *args, **kwargs)
    return map(stage, items, *args, **kwargs)


_nodes.map_stage = _map_stage


# -- graphs built on an Input -------------------------------------------------------------------

# Input -> the graphs built on it (weakly: a graph nobody holds is no graph). Typed Any: graph.py
# imports this module.
_graphs: weakref.WeakKeyDictionary[Input, list[weakref.ref[Any]]] = weakref.WeakKeyDictionary()


def register_graph(graph: Any, nodes: list[Node]) -> None:
    """Note that ``graph`` (whose nodes are ``nodes``) is built on the Inputs among them."""
    for n in nodes:
        if isinstance(n, Input):
            _graphs.setdefault(n, []).append(weakref.ref(graph))


def graphs_on(inp: Input) -> list[Any]:
    """The graphs built on ``inp`` that are still alive, oldest first."""
    return [g for g in (r() for r in _graphs.get(inp, ())) if g is not None]


def reachable_on(inp: Input, nodes: list[Node]) -> set[int]:
    """Ids of ``nodes`` and of every node of a graph built on ``inp``: the nodes that reach an output."""
    reachable = {id(n) for n in nodes}
    for graph in graphs_on(inp):
        reachable.update(id(n) for n in graph.nodes())
    return reachable


def start(stage: Any) -> Node:
    """A graph given as a bare step or chain: applied to a fresh Input, or to nothing when its
    first step takes no argument (a constant pipeline: ``Graph(load >> transform)``)."""
    first = stage.stages[0] if isinstance(stage, Chain) else stage
    if isinstance(first, (FunctionNode, ModelInstance, ModelMethod)) and _takes_nothing(first):
        value = first()
        return Chain(*stage.stages[1:])(value) if isinstance(stage, Chain) and len(stage.stages) > 1 else value  # type: ignore[no-any-return]
    return stage(Input())  # type: ignore[no-any-return]


def _takes_nothing(stage: FunctionNode[Any] | ModelInstance | ModelMethod) -> bool:
    if isinstance(stage, FunctionNode):
        fn, bound = stage.fn, False
    else:
        inst, method = (stage, "__call__") if isinstance(stage, ModelInstance) else (stage.instance, stage.method)
        fn, bound = getattr(inst.model.cls, method, None), True
    try:
        params = list(inspect.signature(fn).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    params = params[1:] if bound else params
    return not any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)
