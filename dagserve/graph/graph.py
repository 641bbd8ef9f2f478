"""``Graph``: an inference graph, named by its output."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from dagserve._errors import GraphError, GraphvizNotFoundError
from dagserve._hooks import hooks
from dagserve.graph.composition import register_graph, start
from dagserve.graph.endpoint import OpenAIEndpoint
from dagserve.graph.nodes import Chain, ModelClass, Node, Stage, nodes_in, walk
from dagserve.graph.subgraph import call_graph

__all__ = ["RESERVED_GRAPH_NAMES", "Graph"]

#: Graph names that routes of the server take, and which routes (a graph is served at /<name>).
RESERVED_GRAPH_NAMES: dict[str, str] = {
    "v1": "the OpenAI-compatible routes /v1/...",
    "v2": "the Open Inference Protocol routes /v2/...",
    "jobs": "the job routes /jobs/...",
    "docs": "the API page /docs",
    "metrics": "the Prometheus metrics /metrics",
    "openapi.json": "the OpenAPI description /openapi.json",
}


class Graph:
    """An inference graph: its output (a node, a ``>>`` chain, or a dict/list/tuple of nodes).

    ::

        with dagserve.Input() as inp:
            graph = dagserve.Graph({"label": classify(inp["text"])}, name="classify")

        graph = dagserve.Graph(clean >> Classifier(vocab) >> respond, name="pipeline")
    """

    #: How the graph is served as an OpenAI model (``dagserve.openai.chat``), if it is.
    openai: OpenAIEndpoint | None = None

    def __init__(self, output: Any, *, name: str = "default", description: str | None = None) -> None:
        import re

        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", name):
            raise GraphError(
                f"Graph name {name!r} is not usable in URLs and deployment names; use letters, digits, "
                "'_', '-' and '.', at most 64 characters."
            )
        if name in RESERVED_GRAPH_NAMES:
            raise GraphError(
                f"Graph name {name!r} is reserved: a graph is served at /<name>, and /{name} is "
                f"{RESERVED_GRAPH_NAMES[name]}. Rename the graph (reserved: {', '.join(RESERVED_GRAPH_NAMES)})."
            )
        if isinstance(output, (Chain, Stage)) and not isinstance(output, ModelClass):
            output = start(output)  # a zero-argument step is called with nothing
        elif isinstance(output, ModelClass):
            raise GraphError(f"Graph(...) got the model class {output.name}; create an instance and call it.")
        if not any(isinstance(v, Node) for v in walk(output)):
            raise GraphError(
                "Graph(output) needs graph nodes in its output, got only constants; build nodes from "
                "`with dagserve.Input() as inp:`."
            )
        self.output = output
        self.name = name
        self.description = description
        register_graph(self, self.nodes())  # several graphs may share one Input

    def nodes(self) -> list[Node]:
        """Every node reachable from the output, dependencies first."""
        seen: dict[int, Node] = {}
        stack: list[tuple[Node, bool]] = [(n, False) for n in reversed(list(nodes_in(self.output)))]
        order: list[Node] = []
        while stack:
            n, expanded = stack.pop()
            if expanded:
                order.append(n)
                continue
            if id(n) in seen:
                continue
            seen[id(n)] = n
            stack.append((n, True))
            stack.extend((d, False) for d in reversed(n.dependencies()) if id(d) not in seen)
        return order

    def served_as(self, endpoint: OpenAIEndpoint) -> Graph:
        """A copy of this graph (the same nodes and name) served as the OpenAI model ``endpoint``;
        ``dagserve.openai.chat`` and ``dagserve.openai.completions`` call it."""
        if self.openai is not None:
            raise GraphError(
                f"Graph {self.name!r} is already served as the OpenAI {self.openai.kind} model "
                f"{self.openai.model!r}; build another Graph on the same output (with its own name) "
                "to serve it under a second route."
            )
        marked = copy.copy(self)
        marked.openai = endpoint
        register_graph(marked, marked.nodes())
        return marked

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """This graph as a step of the graph being built: ``post(review_graph(inp["review"]))``.

        Its nodes are copied onto the argument (its payload); returns its output (graph/subgraph.py).
        """
        return call_graph(self, args, kwargs)

    # Rendering lives in dagserve/render.py, a layer above this one: reached through its hooks.
    def to_dot(self, **kwargs: Any) -> str:
        """DOT source of the diagram (deterministic: the same graph gives the same text)."""
        return hooks.need("to_dot")(self, **kwargs)  # type: ignore[no-any-return]

    def render(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the diagram to ``path``: SVG, PNG or PDF by its suffix, DOT source for ``.dot``."""
        return hooks.need("render")(self, path, **kwargs)  # type: ignore[no-any-return]

    def _repr_svg_(self) -> str | None:
        """Notebook display; ``None`` (Jupyter falls back to the text repr) without ``dot``."""
        try:
            return hooks.need("to_svg")(self)  # type: ignore[no-any-return]
        except GraphvizNotFoundError:
            return None

    def __repr__(self) -> str:
        return f"<dagserve.Graph {self.name!r}>"
