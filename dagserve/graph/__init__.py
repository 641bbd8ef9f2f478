"""The graph model users write: nodes (``nodes.py``), ``switch`` and ``split`` (``routing.py``) and
``Graph`` (``graph.py``), ``map`` and ``optional`` (``composition.py``), ``File`` (``file.py``, the
type of an uploaded or answered file). It knows nothing of compiling, running or serving."""

from __future__ import annotations

from dagserve.graph.composition import MapNode, OptionalNode, map, optional
from dagserve.graph.file import File
from dagserve.graph.graph import Graph
from dagserve.graph.nodes import (
    CallNode,
    Chain,
    FunctionNode,
    Input,
    ModelClass,
    ModelInstance,
    ModelMethod,
    Node,
    SelectNode,
    Stage,
    node,
)
from dagserve.graph.routing import SplitNode, SwitchNode, split, switch

__all__ = [
    "CallNode",
    "Chain",
    "File",
    "FunctionNode",
    "Graph",
    "Input",
    "MapNode",
    "ModelClass",
    "ModelInstance",
    "ModelMethod",
    "Node",
    "OptionalNode",
    "SelectNode",
    "SplitNode",
    "Stage",
    "SwitchNode",
    "map",
    "node",
    "optional",
    "split",
    "switch",
]
