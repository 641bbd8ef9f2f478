"""Graph -> Plan: naming, validation and lowering, in small passes.

1. collect the nodes reachable from the output (dependencies first);
2. check the inputs (at most one ``Input``; nodes built under it that reach no graph built on it);
3. name deployments and steps deterministically;
4. lower each node to a :class:`Step` with templates instead of node references;
5. check annotated types across call edges, the payload fields read against the Input's schema,
   and that batched nodes take a list;
6. check the whole with networkx (acyclic).
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import types
import typing
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from dagserve._errors import CompileError, OptionsError
from dagserve.compiler.lowering import composition_edges, lower_composition
from dagserve.compiler.handle_refs import add_handle_targets, check_handle_cycles, lower_step, spec_with_handles
from dagserve.compiler.plan import DeploymentSpec, Edge, Multiplexing, Plan, Ref, Step, refs_in
from dagserve.compiler.stream_steps import check_streams, is_stream_callable
from dagserve.graph import (
    CallNode,
    FunctionNode,
    Graph,
    Input,
    MapNode,
    ModelInstance,
    Node,
    OptionalNode,
    SelectNode,
    SplitNode,
    SwitchNode,
)
from dagserve.graph.composition import reachable_on
from dagserve.graph.loaders import loader_of
from dagserve.graph.subgraph import scope_of

__all__ = ["compile"]


def compile(graph: Graph, *, options: Mapping[str, Mapping[str, Any]] | None = None) -> Plan:  # noqa: A001
    """Validate ``graph`` and lower it to a frozen :class:`Plan` (the public name is dagserve.compile).

    ``options`` maps node (deployment) names to options that override those in code (a config
    file's, ``dagserve.deploy(config=...)``); they are validated like ``.options(...)``.

    Raises :class:`~dagserve.CompileError` for graph-wide problems (several inputs, dead nodes,
    types that cannot meet across an edge, a payload field the Input's schema does not declare, a
    batched node whose parameter is annotated as one item).
    """
    if not isinstance(graph, Graph):
        raise CompileError(f"dagserve.compile takes a dagserve.Graph, got {type(graph).__name__}.")
    nodes = graph.nodes()
    inp = _check_inputs(graph, nodes)
    deployments, dep_of = _name_deployments(nodes)
    calls = add_handle_targets(deployments, dep_of, nodes)  # deployments nodes call from code
    check_handle_cycles(graph.name, calls)
    step_names = _name_steps(nodes, dep_of)
    index = {id(n): i for i, n in enumerate(nodes)}
    if options:
        nodes = _with_options(graph.name, nodes, deployments, dep_of, step_names, index, options)
    steps = tuple(_lower(i, n, index, step_names, dep_of, deployments) for i, n in enumerate(nodes))
    _check_types(nodes, steps, step_names, index)
    _check_fields(nodes, step_names)
    _check_batched(nodes, step_names)
    output = _template(graph.output, index)
    edges = _edges(steps)
    _check_dag(graph.name, steps)
    check_streams(graph.name, steps, output, lambda s: deployments[s.deployment].node_options.max_batch_size is not None)
    specs = tuple(_spec(name, src, [s for s in steps if s.deployment == name]) for name, src in deployments.items())
    if calls:
        callees = {c for _, c in calls}
        steps = tuple(lower_step(s, dep_of) for s in steps)
        specs = tuple(spec_with_handles(s, dep_of, callees) for s in specs)
    return Plan(
        graph_name=graph.name,
        input_schema=inp.schema if inp is not None else None,
        steps=steps,
        deployments=specs,
        edges=edges,
        output=output,
        description=graph.description,
        calls=tuple(calls),
        groups=_groups(nodes, step_names),
        openai=graph.openai,
    )


def multiplexing(cls: type) -> Multiplexing | None:
    """A model class's ``@dagserve.multiplexed`` loader, as the plan records it."""
    found = loader_of(cls)
    return Multiplexing(*found) if found is not None else None


def _groups(nodes: list[Node], names: dict[int, str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The graphs called inside this one (graph/subgraph.py) and their steps, for diagrams."""
    groups: dict[str, list[str]] = {}
    for n in nodes:
        scope = scope_of(n)
        if scope is not None:
            groups.setdefault(scope, []).append(names[id(n)])
    return tuple((g, tuple(s)) for g, s in groups.items())


# -- pass 2: inputs ------------------------------------------------------------------------------


def _check_inputs(graph: Graph, nodes: list[Node]) -> Input | None:
    inputs = [n for n in nodes if isinstance(n, Input)]
    if not inputs:
        return None  # a graph reading nothing of the payload: it runs per request all the same
    if len(inputs) > 1:
        raise CompileError(
            f"Graph {graph.name!r} mixes nodes from {len(inputs)} different Inputs; a graph has one "
            "payload. Build every node from the same `with dagserve.Input() as inp:` block."
        )
    inp = inputs[0]
    reachable = reachable_on(inp, nodes)  # several graphs may be built on one Input
    dead = [n for n in inp._created if id(n) not in reachable]
    if dead:
        names = ", ".join(sorted({n.describe() for n in dead}))
        raise CompileError(
            f"Graph {graph.name!r} has nodes that never reach its output: {names} (nor that of another "
            "graph built on its Input). Remove them, or include their results in an output "
            "(e.g. Graph({'a': a, 'b': b}))."
        )
    return inp


# -- pass 3: names ---------------------------------------------------------------------------------


def _name_deployments(nodes: list[Node]) -> tuple[dict[str, FunctionNode[Any] | ModelInstance], dict[int, str]]:
    """One deployment per model instance and per function node, named in order of appearance."""
    deployments: dict[str, FunctionNode[Any] | ModelInstance] = {}
    dep_of: dict[int, str] = {}
    explicit: dict[str, FunctionNode[Any] | ModelInstance] = {}
    for n in nodes:
        if not isinstance(n, CallNode) or id(n.target) in dep_of:
            continue
        target = n.target
        name = target.name
        if target.node_options.name is not None:
            other = explicit.get(name)
            if other is not None and other is not target:
                raise CompileError(
                    f"Two different nodes are both named {name!r}; deployment names must be unique. "
                    "Give one of them another name with .options(name=...)."
                )
            explicit[name] = target
        base, k = name, 1
        while name in deployments:
            k += 1
            name = f"{base}_{k}"
        deployments[name] = target
        dep_of[id(target)] = name
    return deployments, dep_of


def _with_options(
    graph_name: str,
    nodes: list[Node],
    deployments: dict[str, Any],
    dep_of: dict[int, str],
    names: dict[int, str],
    index: dict[int, int],
    options: Mapping[str, Mapping[str, Any]],
) -> list[Node]:
    """Options given at compile time over those in code: the overridden nodes and their calls are
    copied with the new options (the user's graph is left as it is), before anything reads them."""
    for name in options:
        if name not in deployments:
            close = difflib.get_close_matches(name, list(deployments), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise OptionsError(f"Graph {graph_name!r} has no node {name!r}.{hint} Its nodes: {', '.join(deployments)}.")
        if "name" in options[name]:
            raise OptionsError(f"Node {name!r}: a node's name is set in code, not by options given to compile.")
    swap: dict[int, Any] = {}
    for name, overrides in options.items():
        old = deployments[name]
        new = old.options(**overrides)  # validated as in code; errors name the node and the option
        swap[id(old)], deployments[name], dep_of[id(new)] = new, new, name
    out: list[Node] = []
    for n in nodes:
        if isinstance(n, CallNode) and id(n.target) in swap:
            twin = copy.copy(n)
            twin.target = swap[id(n.target)]
            index[id(twin)], names[id(twin)] = index[id(n)], names[id(n)]
            n = twin
        out.append(n)
    return out


def _name_steps(nodes: list[Node], dep_of: dict[int, str]) -> dict[int, str]:
    names: dict[int, str] = {}
    used: Counter[str] = Counter()

    def unique(base: str) -> str:
        used[base] += 1
        return base if used[base] == 1 else f"{base}#{used[base]}"

    for n in nodes:
        if isinstance(n, Input):
            base = "input"
        elif isinstance(n, CallNode):
            dep = dep_of[id(n.target)]
            base = dep if n.method == "__call__" else f"{dep}.{n.method}"
        elif isinstance(n, SelectNode):
            base = f"{names[id(n.parent)]}[{n.key!r}]"
        elif isinstance(n, SwitchNode):
            base = n.name or "switch"
        elif isinstance(n, SplitNode):
            base = n.name or "split"
        elif isinstance(n, OptionalNode):
            base = f"optional({names[id(n.node)]})"
        else:  # pragma: no cover - every Node subclass is handled above
            raise CompileError(f"Unknown node type {type(n).__name__}.")
        scope = scope_of(n)  # copied from a graph called inside this one: "review/Sentiment"
        names[id(n)] = unique(base if scope is None else f"{scope}/{base}")
    return names


# -- pass 4: lowering ------------------------------------------------------------------------------


def _template(value: Any, index: dict[int, int]) -> Any:
    if isinstance(value, Node):
        return Ref(index[id(value)])
    if isinstance(value, list):
        return [_template(v, index) for v in value]
    if isinstance(value, tuple):
        return tuple(_template(v, index) for v in value)
    if isinstance(value, dict):
        return {k: _template(v, index) for k, v in value.items()}
    return value


def _lower(
    i: int,
    n: Node,
    index: dict[int, int],
    names: dict[int, str],
    dep_of: dict[int, str],
    deployments: dict[str, Any],
) -> Step:
    deps = tuple(index[id(d)] for d in n.dependencies())
    deps = tuple(dict.fromkeys(deps))
    name = names[id(n)]
    if isinstance(n, (MapNode, OptionalNode)):  # compiler/lowering.py
        return lower_composition(i, n, deps, name, functools.partial(_template, index=index), dep_of)
    if isinstance(n, Input):
        return Step(i, name, "input", (), returns=n.schema)
    if isinstance(n, CallNode):
        dep = dep_of[id(n.target)]
        streams = is_stream_callable(n.callable())  # its value is a stream of items (compiler/stream_steps.py)
        if streams and n.model_id is not None:
            raise CompileError(
                f"Node {name!r} is a generator of a multiplexed class; multiplexed nodes return one value per "
                "call (streaming is not supported for them). Return the whole result, or stream from another node."
            )
        return Step(
            i,
            name,
            "call",
            deps,
            deployment=dep,
            method=n.method,
            args=_template(n.args, index),
            kwargs=_template(n.kwargs, index),
            inline=n.target.node_options.inline,
            returns=None if streams else _return_annotation(n.callable(), batched=n.target.node_options.max_batch_size is not None),
            streams=streams,
            model_id=_template(n.model_id, index),
        )
    if isinstance(n, SelectNode):
        return Step(i, name, "select", deps, key=n.key)
    if isinstance(n, SwitchNode):
        return Step(
            i,
            name,
            "switch",
            deps,
            cases=tuple((k, _template(v, index)) for k, v in n.cases.items()),
            default=_template(n.default, index) if n.has_default else None,
            has_default=n.has_default,
        )
    if isinstance(n, SplitNode):
        return Step(
            i,
            name,
            "split",
            deps,
            key=Ref(index[id(n.key)]) if n.key is not None else None,
            cases=tuple((k, _template(v, index)) for k, v in n.branches.items()),
            weights=tuple(n.weights.items()),
            seed=n.seed,
        )
    raise CompileError(f"Unknown node type {type(n).__name__}.")  # pragma: no cover


def _spec(name: str, source: Any, calls: list[Step]) -> DeploymentSpec:
    methods = tuple(dict.fromkeys(s.method for s in calls if s.method is not None))
    if isinstance(source, FunctionNode):
        return DeploymentSpec(
            name=name,
            kind="function",
            target=source.fn,
            options=source.node_options,
            methods=("__call__",),
            async_methods=frozenset({"__call__"}) if source.is_async else frozenset(),
            source=source,
        )
    cls = source.model.cls
    return DeploymentSpec(
        name=name,
        kind="model",
        target=cls,
        options=source.node_options,
        methods=methods,
        async_methods=frozenset(m for m in methods if inspect.iscoroutinefunction(getattr(cls, m))),
        init_args=tuple(source.init_args),
        init_kwargs=dict(source.init_kwargs),
        source=source,
        multiplexed=multiplexing(cls),
    )


# -- pass 5: types across edges -------------------------------------------------------------------


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: nothing to check
        return {}


def _return_annotation(fn: Callable[..., Any], *, batched: bool) -> Any:
    ret = _hints(fn).get("return")
    return _item_type(ret) if batched else ret


def _item_type(tp: Any) -> Any:
    """``list[T]`` -> ``T`` (what one request of a batched node sees)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (list, typing.List) and len(args) == 1:  # noqa: UP006
        return args[0]
    return None


def _param_annotations(n: CallNode) -> dict[str, Any]:
    fn = n.callable()
    hints = _hints(fn)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    params = list(sig.parameters.values())
    if isinstance(n.target, ModelInstance):
        params = params[1:]
    batched = n.target.node_options.max_batch_size is not None
    out: dict[str, Any] = {}
    try:
        bound = inspect.Signature(params).bind(*n.args, **n.kwargs)
    except TypeError:
        return {}
    for pname, value in bound.arguments.items():
        if isinstance(value, Node) and pname in hints:
            out[pname] = _item_type(hints[pname]) if batched else hints[pname]
    return out


def _concrete(tp: Any) -> tuple[type, ...] | None:
    """The runtime classes a type annotation admits, or None when it cannot be checked."""
    if tp is None or tp is Any or isinstance(tp, (str, typing.TypeVar)):
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_concrete(a) for a in typing.get_args(tp)]
        if any(p is None for p in parts):
            return None
        return tuple(c for p in parts for c in p)  # type: ignore[union-attr]
    if origin is typing.Annotated:
        return _concrete(typing.get_args(tp)[0])
    if origin is typing.Literal:
        return tuple({type(a) for a in typing.get_args(tp)})
    if origin is not None:
        return (origin,) if isinstance(origin, type) else None
    if tp is type(None):
        return (type(None),)
    if isinstance(tp, type) and not getattr(tp, "_is_protocol", False):
        return (tp,)
    return None


def _meets(produced: tuple[type, ...], expected: tuple[type, ...]) -> bool:
    numeric = {int: (float, complex), float: (complex,)}
    for p in produced:
        for e in expected:
            try:
                if issubclass(p, e) or e in numeric.get(p, ()):
                    return True
            except TypeError:
                return True
    return False


def _check_types(nodes: list[Node], steps: tuple[Step, ...], names: dict[int, str], index: dict[int, int]) -> None:
    for n in nodes:
        if not isinstance(n, CallNode):
            continue
        for pname, expected in _param_annotations(n).items():
            arg = _bound_arg(n, pname)
            if not isinstance(arg, CallNode):
                continue
            produced = steps[index[id(arg)]].returns
            if isinstance(n, MapNode) and arg is n.items:
                produced = _item_type(produced)  # each item of the list goes to its own call
            p, e = _concrete(produced), _concrete(expected)
            if p is None or e is None or _meets(p, e):
                continue
            raise CompileError(
                f"Node {names[id(arg)]!r} returns {_type_name(produced)} but node {names[id(n)]!r} "
                f"expects {_type_name(expected)} for its argument {pname!r}. Convert the value in "
                "between, or fix one of the annotations."
            )


def _check_fields(nodes: list[Node], names: dict[int, str]) -> None:
    """Selections from a payload with a schema must name a field of it: the executor reads them
    as attributes of the validated model, so an undeclared one fails every request (a 400 that
    blames the caller even when the payload has the field, since validation drops it)."""
    models: dict[int, Any] = {}  # node -> the pydantic model its value is, where known
    readers: dict[int, list[str]] = {}
    for n in nodes:
        for d in n.dependencies():
            readers.setdefault(id(d), []).append(names[id(n)])
    for n in nodes:
        if isinstance(n, Input):
            models[id(n)] = n.schema
        elif isinstance(n, SelectNode) and models.get(id(n.parent)) is not None:
            model = models[id(n.parent)]
            users = readers.get(id(n))
            who = f"Node {users[0]!r}" if users else "The graph's output"
            field = _model_field(model, n.key, f"{who} reads {names[id(n)]}")
            sub = getattr(field, "annotation", None)
            models[id(n)] = sub if isinstance(sub, type) and hasattr(sub, "model_fields") else None


def _model_field(model: Any, key: Any, where: str) -> Any:
    """``model``'s field ``key`` (``None`` for other readable attributes); :class:`CompileError`
    when a validated ``model`` has no such attribute."""
    if not isinstance(key, str):
        raise CompileError(
            f"{where}, but that value is a {model.__name__} (the Input's schema), read by field name only. "
            f"Select one of its fields ({_field_list(model)}) by name."
        )
    field = model.model_fields.get(key)
    if field is not None:
        return field
    attribute = inspect.getattr_static(model, key, None)
    if key in model.model_computed_fields or isinstance(attribute, (property, functools.cached_property)):
        return None
    if model.model_config.get("extra") == "allow":  # undeclared fields are kept on the model
        return None
    raise CompileError(
        f"{where}, but the Input's schema {model.__name__} has no field {key!r} ({_field_list(model)}): "
        "validation would drop it from every payload and every request would fail. Declare it in "
        f"{model.__name__} (e.g. `{key}: str`), or select one of its fields."
    )


def _field_list(model: Any) -> str:
    fields = list(model.model_fields)
    return f"fields: {', '.join(fields)}" if fields else "it has no fields"


def _check_batched(nodes: list[Node], names: dict[int, str]) -> None:
    """A batched node's method gets a list of items; a parameter annotated as one item (``str``)
    would fail on every request (``AttributeError: 'list' object has no attribute ...``)."""
    for n in nodes:
        if not isinstance(n, CallNode) or n.target.node_options.max_batch_size is None:
            continue
        fn = n.callable()
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            continue
        if isinstance(n.target, ModelInstance):
            params = params[1:]
        if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            continue
        pname = params[0].name
        annotation = _hints(fn).get(pname)
        if _takes_a_list(annotation):
            continue
        size = n.target.node_options.max_batch_size
        item = _type_name(annotation)
        raise CompileError(
            f"Node {names[id(n)]!r} is batched (max_batch_size={size}), so its parameter {pname!r} receives "
            f"a list of up to {size} items, but it is annotated {item}. Annotate it `{pname}: list[{item}]` "
            "and return a list with one result per item, or drop max_batch_size to get one item per call."
        )


def _takes_a_list(annotation: Any) -> bool:
    """Could a list be what ``annotation`` describes? Unknown or uncheckable annotations can."""
    classes = _concrete(annotation)
    if classes is None:
        return True
    # A tuple is a sequence of items too, read the same way as the list. Array types (numpy, torch)
    # are commonly built from the list (np.stack(batch)): not refused on a guess.
    return any(c is tuple or hasattr(c, "__array__") or _subclass(list, c) for c in classes)


def _subclass(cls: type, parent: type) -> bool:
    try:
        return issubclass(cls, parent)
    except TypeError:  # not a class issubclass understands: cannot tell, so allow
        return True


def _bound_arg(n: CallNode, pname: str) -> Any:
    fn = n.callable()
    params = list(inspect.signature(fn).parameters.values())
    if isinstance(n.target, ModelInstance):
        params = params[1:]
    return inspect.Signature(params).bind(*n.args, **n.kwargs).arguments.get(pname)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


# -- edges and the networkx check ------------------------------------------------------------------


def _edges(steps: tuple[Step, ...]) -> tuple[Edge, ...]:
    edges: list[Edge] = []
    for s in steps:
        if s.kind == "call":
            labels: dict[int, str | None] = {}
            for pos, t in enumerate(s.args):
                for r in refs_in(t):
                    labels.setdefault(r, None if isinstance(t, Ref) and len(s.args) == 1 else f"arg{pos}")
            for k, t in (*s.kwargs.items(), ("model_id", s.model_id)):
                for r in refs_in(t):
                    labels.setdefault(r, k)
            edges.extend(Edge(steps[r].name, s.name, label) for r, label in labels.items())
        elif s.kind in ("map", "optional"):
            edges.extend(composition_edges(s, steps))
        elif s.kind == "select":
            edges.append(Edge(steps[s.inputs[0]].name, s.name, f"[{s.key!r}]"))
        elif s.kind == "switch":
            edges.append(Edge(steps[s.inputs[0]].name, s.name, "key"))
            for value, t in s.cases:
                edges.extend(Edge(steps[r].name, s.name, f"case {value!r}") for r in refs_in(t))
            if s.has_default:
                edges.extend(Edge(steps[r].name, s.name, "default") for r in refs_in(s.default))
        elif s.kind == "split":
            if isinstance(s.key, Ref):
                edges.append(Edge(steps[s.key.index].name, s.name, "key"))
            weights = dict(s.weights)
            for label, t in s.cases:
                edges.extend(Edge(steps[r].name, s.name, f"{label} {weights[label]:.0%}") for r in refs_in(t))
    return tuple(edges)


def _check_dag(graph_name: str, steps: tuple[Step, ...]) -> None:
    import networkx as nx  # imported when compiling, not by `import dagserve` (it takes ~150 ms)

    g = nx.DiGraph()
    g.add_nodes_from(range(len(steps)))
    g.add_edges_from((d, s.index) for s in steps for d in s.inputs)
    if not nx.is_directed_acyclic_graph(g):  # pragma: no cover - nodes are immutable, so never
        raise CompileError(f"Graph {graph_name!r} has a cycle.")
    # Nodes that read nothing of the payload (a constant pipeline, a zero-argument function) are
    # allowed: they run on every request, like the others (docs/graphs.md).
