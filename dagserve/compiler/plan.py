"""The compiled plan: frozen, inspectable, and the only thing backends consume.

A :class:`Plan` lists one :class:`DeploymentSpec` per model instance and per function node (inline
ones included, flagged), one :class:`Step` per graph node in dependency order, and the edges
between steps. Values flow between steps through *templates*: nested lists/tuples/dicts whose
leaves are constants or :class:`Ref` to a step's result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dagserve._errors import NodeNotFoundError
from dagserve._options import NodeOptions
from dagserve.graph.endpoint import OpenAIEndpoint

__all__ = ["DeploymentSpec", "Edge", "Multiplexing", "Plan", "Ref", "Step", "fill", "refs_in"]


@dataclass(frozen=True, slots=True)
class Ref:
    """A template leaf: the result of step ``index``."""

    index: int


def refs_in(template: Any) -> list[int]:
    """Step indices a template reads, in order, without duplicates."""
    out: list[int] = []

    def walk(t: Any) -> None:
        if isinstance(t, Ref):
            if t.index not in out:
                out.append(t.index)
        elif isinstance(t, (list, tuple)):
            for x in t:
                walk(x)
        elif isinstance(t, dict):
            for x in t.values():
                walk(x)

    walk(template)
    return out


def fill(template: Any, values: list[Any]) -> Any:
    """The template with every :class:`Ref` replaced by its step's value."""
    if isinstance(template, Ref):
        return values[template.index]
    if isinstance(template, list):
        return [fill(t, values) for t in template]
    if isinstance(template, tuple):
        return tuple(fill(t, values) for t in template)
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    return template


@dataclass(frozen=True)
class Multiplexing:
    """A model node with many models (``@dagserve.multiplexed``): its ``loader`` method and how
    many models one replica holds at most."""

    loader: str
    max_models_per_replica: int


@dataclass(frozen=True)
class DeploymentSpec:
    """One independently scalable unit: a model instance or a function node.

    ``target`` is the user's class or function, ``init_args``/``init_kwargs`` the model's
    constructor arguments, ``methods`` the methods the graph calls (``"__call__"`` for functions),
    ``async_methods`` those that are coroutine functions. ``inline`` deployments run inside the
    ingress process.
    """

    name: str
    kind: Literal["model", "function"]
    target: Any
    options: NodeOptions
    methods: tuple[str, ...]
    async_methods: frozenset[str]
    init_args: tuple[Any, ...] = ()
    init_kwargs: Mapping[str, Any] = field(default_factory=dict)
    source: Any = field(default=None, repr=False, compare=False)
    #: Many models per replica (docs/multiplexing.md); ``None``: one model, or a function.
    multiplexed: Multiplexing | None = None

    @property
    def inline(self) -> bool:
        return self.options.inline

    @property
    def batched(self) -> bool:
        return self.options.max_batch_size is not None

    def is_async(self, method: str) -> bool:
        return method in self.async_methods


StepKind = Literal["input", "call", "select", "switch", "split", "map", "optional"]


@dataclass(frozen=True)
class Step:
    """One node of the graph as the executor runs it.

    * ``input``: the (validated) payload.
    * ``call``: ``deployment.method(*args, **kwargs)``; ``args``/``kwargs`` are templates.
    * ``select``: ``inputs[0][key]``.
    * ``switch``: ``cases[value of inputs[0]]`` (or ``default``); only that template is evaluated.
    * ``split``: a branch picked by ``weights`` (random, or by hashing ``key_step``'s value).
    * ``map``: ``deployment.method(item, *args[1:], **kwargs)`` for each item of ``args[0]``.
    * ``optional``: ``inputs[0]``'s value, or ``default`` / ``on_error(error)`` when it fails.

    ``streams``: a call step whose node is a generator; its value is a stream of items
    (:mod:`dagserve.runtime.streaming`), read whole by the output or by one call step.

    ``model_id``: a multiplexed node's call: where its model id comes from (a template: a
    :class:`Ref` or a constant id); the executor passes it as the ``model_id`` keyword and the
    backends route by it. ``None`` for every other step.
    """

    index: int
    name: str
    kind: StepKind
    inputs: tuple[int, ...]
    deployment: str | None = None
    method: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    key: Any = None
    cases: tuple[tuple[Any, Any], ...] = ()
    default: Any = None
    has_default: bool = False
    weights: tuple[tuple[str, float], ...] = ()
    seed: int | None = None
    inline: bool = False
    returns: Any = None
    on_error: Any = None  # optional steps: a function of the error, or None
    streams: bool = False
    model_id: Any = None

    @property
    def lazy(self) -> bool:
        """Routing steps evaluate only the branch they choose."""
        return self.kind in ("switch", "split")


@dataclass(frozen=True)
class Edge:
    """``source`` feeds ``target``; ``label`` says how (a case, a weight, an argument name)."""

    source: str
    target: str
    label: str | None = None


@dataclass(frozen=True)
class Plan:
    """What a backend needs to run a graph, and nothing of any backend."""

    graph_name: str
    input_schema: Any
    steps: tuple[Step, ...]
    deployments: tuple[DeploymentSpec, ...]
    edges: tuple[Edge, ...]
    output: Any
    description: str | None = None
    #: ``(holder, callee)``: deployment ``holder`` calls ``callee`` through a handle (compiler/handle_refs.py).
    calls: tuple[tuple[str, str], ...] = ()
    #: ``(graph name, step names)``: graphs called inside this one (graph/subgraph.py), for diagrams.
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: How the graph is served as an OpenAI model (graph/endpoint.py), if it is: the HTTP layer reads it.
    openai: OpenAIEndpoint | None = None

    @property
    def inline_nodes(self) -> tuple[str, ...]:
        """Names of the deployments that run inside the ingress process."""
        return tuple(d.name for d in self.deployments if d.inline)

    @property
    def streams(self) -> bool:
        """Is the graph's output a stream of items (its output node is a generator)?"""
        return isinstance(self.output, Ref) and self.steps[self.output.index].streams

    @property
    def remote_deployments(self) -> tuple[DeploymentSpec, ...]:
        """Deployments that get replicas of their own (everything not inline)."""
        return tuple(d for d in self.deployments if not d.inline)

    def deployment(self, node: Any) -> DeploymentSpec:
        """The deployment for ``node``: its name, or the function node / model instance / call."""
        from dagserve.graph import CallNode, FunctionNode, ModelMethod

        if isinstance(node, CallNode):
            node = node.target
        elif isinstance(node, ModelMethod):
            node = node.instance
        for d in self.deployments:
            if (isinstance(node, str) and d.name == node) or (d.source is not None and d.source is node):
                return d
        if isinstance(node, FunctionNode):
            # The same function used under a different .options() copy still counts.
            matches = [d for d in self.deployments if d.target is node.fn]
            if len(matches) == 1:
                return matches[0]
        known = ", ".join(repr(d.name) for d in self.deployments)
        raise NodeNotFoundError(
            f"Graph {self.graph_name!r} has no node {node!r}; "
            f"its nodes are: {known}."
        )

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise NodeNotFoundError(f"Graph {self.graph_name!r} has no step {name!r}.")

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description of the plan (served at ``GET /-/graph``)."""
        return {
            "graph": self.graph_name,
            "input_schema": self.input_schema.model_json_schema() if self.input_schema is not None else None,
            "deployments": [
                {
                    "name": d.name,
                    "kind": d.kind,
                    "inline": d.inline,
                    "methods": list(d.methods),
                    "options": d.options.model_dump(mode="json", exclude={"name"}),
                    "multiplexed": (
                        {"loader": d.multiplexed.loader, "max_models_per_replica": d.multiplexed.max_models_per_replica}
                        if d.multiplexed is not None
                        else None
                    ),
                }
                for d in self.deployments
            ],
            "steps": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "deployment": s.deployment,
                    "method": s.method,
                    "inline": s.inline,
                    "streams": s.streams,
                }
                for s in self.steps
            ],
            "streams": self.streams,
            "edges": [{"source": e.source, "target": e.target, "label": e.label} for e in self.edges],
        }
