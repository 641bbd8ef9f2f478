"""The DOT text of a plan's diagram (and of a running App's, with live numbers)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagserve._errors import RenderError
from dagserve.compiler.plan import DeploymentSpec, Plan, Ref, Step
from dagserve.graph import Graph

if TYPE_CHECKING:
    from dagserve.observe.stats import Latency
    from dagserve.runtime.status import AppStatus

from dagserve.render.labels import (
    BAD,
    CLUSTER_FILL,
    FILL,
    INK,
    KIND_TEXT,
    MAP_LINE,
    MUTED,
    Line,
    duration,
    has_ref,
    html_escape,
    io_table,
    key_text,
    label,
    option_lines,
    optional_node,
    path_text,
    percent,
    quote,
    refs_with_paths,
    replica_lines,
    row_key,
    short,
    type_name,
)


@dataclass(frozen=True)
class _Live:
    status: AppStatus
    latency: dict[str, Latency]
    requests: Latency | None
    window_s: float


@dataclass
class _Edge:
    tail: str
    tail_port: str | None
    head: str
    head_port: str | None
    selection: str
    dashed: bool
    slots: list[str] = field(default_factory=list)


def graph_clusters(grouped: dict[str, list[str]]) -> list[str]:
    """A labelled cluster per graph called inside the drawn one (graph/subgraph.py)."""
    out: list[str] = []
    for name, lines in grouped.items():
        out.append(f"  subgraph {quote('cluster_graph_' + name)} {{")
        out.append(f'    graph [label=<<b>{html_escape(name)}</b>>, labeljust=l, style="dashed", color="{MUTED}"];')
        out.extend("  " + line for line in lines)
        out.append("  }")
    return out


def _plan_of(graph: Any) -> Plan:
    if isinstance(graph, Plan):
        return graph
    if isinstance(graph, Graph):
        from dagserve.compiler.passes import compile as compile_graph

        return compile_graph(graph)
    raise RenderError(f"Diagrams are drawn from a dagserve.Graph or Plan, got {type(graph).__name__}.")


class _Diagram:
    """One plan's DOT text; ``live`` adds replica counts and latencies."""

    def __init__(self, plan: Plan, live: _Live | None = None) -> None:
        self.plan = plan
        self.live = live
        self.steps = plan.steps
        self.specs = {d.name: d for d in plan.deployments}
        self.calls_of: dict[str, list[Step]] = {}
        for s in self.steps:
            if s.kind in ("call", "map") and s.deployment is not None:
                self.calls_of.setdefault(s.deployment, []).append(s)
        names = {s.name for s in self.steps}
        self.output_id = "(output)"
        while self.output_id in names:  # a step could be named "(output)" through switch(name=...)
            self.output_id += "'"
        schema = plan.input_schema
        self.fields: list[str] = list(schema.model_fields) if schema is not None else []

    # -- the document --------------------------------------------------------------------------
    def dot(self) -> str:
        left = '<br align="left"/>'
        title = f"<b>{html_escape(self.plan.graph_name)}</b>{left}"
        notes = [self.plan.description] if self.plan.description else []
        if self.live is not None:
            notes.append(self._live_title())
        if notes:
            title += f'<font point-size="10" color="{MUTED}">' + "".join(html_escape(n) + left for n in notes) + "</font>"
        out = [
            f"digraph {quote(self.plan.graph_name)} {{",
            f'  graph [rankdir=LR, fontname="Helvetica", fontsize=13, label=<{title}>, labelloc=t, labeljust=l, '
            'nodesep=0.3, ranksep=0.5, pad=0.2];',
            f'  node [fontname="Helvetica", fontsize=11, shape=box, style="filled", color="{INK}", '
            'margin="0.14,0.07"];',
            f'  edge [fontname="Helvetica", fontsize=9, color="{MUTED}", fontcolor="{INK}", arrowsize=0.7];',
        ]
        done: set[str] = set()
        group_of = {step: g for g, steps in self.plan.groups for step in steps}
        grouped: dict[str, list[str]] = {}  # graphs called inside this one: a cluster each
        for s in self.steps:
            lines: list[str] = []
            scope = group_of.get(s.name)
            if s.kind == "input":
                lines.append(self._input_node(s))
            elif s.kind in ("call", "map"):
                assert s.deployment is not None  # every call step names its deployment
                if s.deployment in done:
                    continue
                done.add(s.deployment)
                spec = self.specs[s.deployment]
                calls = self.calls_of[s.deployment]
                if len({group_of.get(c.name) for c in calls}) > 1:
                    scope = None  # one model called inside and outside: drawn outside
                lines.extend(self._cluster(spec, calls) if len(calls) > 1 else [self._call_node(s, spec, solo=True)])
            elif s.kind in ("switch", "split"):
                lines.append(self._route_node(s))
            elif s.kind == "optional":
                lines.append(optional_node(s))
            (out if scope is None else grouped.setdefault(scope, [])).extend(lines)
        out.extend(graph_clusters(grouped))
        out.extend(self._handle_only_node(spec) for spec in self.plan.deployments if spec.name not in self.calls_of)
        out.append(self._output_node())
        out.extend(self._edge_line(e) for e in self._edges())
        out.extend(self._edge_line(e) for e in self._calls_edges())
        out.append("}")
        return "\n".join(out) + "\n"

    def _live_title(self) -> str:
        assert self.live is not None
        req = self.live.requests
        if req is None:
            return "live: no requests recorded yet"
        return (
            f"live: {req.count} requests in the last {duration(self.live.window_s)}, p50 {duration(req.p50_s)}, "
            f"p99 {duration(req.p99_s)}, {req.errors} failed"
        )

    # -- nodes ---------------------------------------------------------------------------------
    def _input_node(self, s: Step) -> str:
        schema = self.plan.input_schema
        head = "<b>input</b>" if schema is None else f"<b>input</b>: {html_escape(schema.__name__)}"
        rows = [f"<tr><td>{head}</td></tr>"]
        if schema is not None:
            for i, (fname, info) in enumerate(schema.model_fields.items()):
                text = f"{fname}: {type_name(info.annotation)}"
                if not info.is_required() and info.default_factory is None:
                    text += f" = {short(key_text(info.default), 24)}"
                rows.append(f'<tr><td port="f{i}" align="left">{html_escape(text)}</td></tr>')
        return f"  {quote(s.name)} [shape=plain, style=solid, label=<{io_table(rows)}>];"

    def _output_node(self) -> str:
        rows = ["<tr><td><b>output</b></td></tr>"]
        output = self.plan.output
        if isinstance(output, (dict, list, tuple)):
            items = output.items() if isinstance(output, dict) else enumerate(output)
            for i, (key, value) in enumerate(items):
                text = row_key(key, output)
                if not has_ref(value):
                    text += f" = {short(key_text(value), 24)}"
                rows.append(f'<tr><td port="p{i}" align="left">{html_escape(text)}</td></tr>')
        return f"  {quote(self.output_id)} [shape=plain, style=solid, label=<{io_table(rows)}>];"

    def _call_node(self, s: Step, spec: DeploymentSpec, *, solo: bool) -> str:
        lines: list[Line] = [(s.name, "")]
        if s.kind == "map":
            lines.append(MAP_LINE)
        if solo:
            lines.extend(self._deployment_lines(spec))
        lines.extend(self._latency_lines(s))
        style = "rounded,filled" if spec.kind == "function" else "filled"
        if spec.inline:
            style += ",dashed"
        stacked = ", peripheries=2" if s.kind == "map" else ""  # a map: a stack of calls
        return f'  {quote(s.name)} [style="{style}", fillcolor="{FILL[spec.kind]}"{stacked}, label=<{label(lines)}>];'

    def _cluster(self, spec: DeploymentSpec, calls: list[Step]) -> list[str]:
        lines: list[Line] = [(spec.name, ""), *self._deployment_lines(spec)]
        style = "rounded,filled" + (",dashed" if spec.inline else "")
        out = [
            f"  subgraph {quote('cluster_' + spec.name)} {{",
            f'    graph [label=<{label(lines)}>, labeljust=l, style="{style}", '
            f'fillcolor="{CLUSTER_FILL[spec.kind]}", color="{INK}"];',
        ]
        out.extend("  " + self._call_node(s, spec, solo=False) for s in calls)
        out.append("  }")
        return out

    def _deployment_id(self, name: str) -> str:
        """Where a handle edge ends for deployment ``name``: its first call step, else its own box."""
        calls = self.calls_of.get(name)
        return calls[0].name if calls else f"(handle) {name}"

    def _handle_only_node(self, spec: DeploymentSpec) -> str:
        """A deployment no step calls: nodes call it through handles (compiler/handle_refs.py)."""
        lines: list[Line] = [(spec.name, ""), *self._deployment_lines(spec), ("called through handles", MUTED)]
        style = "rounded,filled" if spec.kind == "function" else "filled"
        return f'  {quote(self._deployment_id(spec.name))} [style="{style}", fillcolor="{FILL[spec.kind]}", label=<{label(lines)}>];'

    def _calls_edges(self) -> list[_Edge]:
        """A dashed "calls" edge from each deployment holding a handle to the deployment it calls."""
        return [
            _Edge(self._deployment_id(a), None, self._deployment_id(b), None, "calls", True) for a, b in self.plan.calls
        ]

    def _route_node(self, s: Step) -> str:
        lines: list[Line] = [(s.name, "")]
        if s.name.split("#")[0] != s.kind:
            lines.append((s.kind, MUTED))
        if s.kind == "split" and s.key is not None:
            lines.append(("sticky by key", MUTED))
        return (
            f'  {quote(s.name)} [shape=diamond, margin="0.02,0.02", fillcolor="{FILL["route"]}", '
            f"label=<{label(lines)}>];"
        )

    def _deployment_lines(self, spec: DeploymentSpec) -> list[Line]:
        kind = KIND_TEXT[spec.kind] + (", inline" if spec.inline else "")
        lines: list[Line] = [(kind, MUTED)]
        lines.extend((text, MUTED) for text in option_lines(spec, live=self.live is not None))
        if self.live is not None and not spec.inline:
            lines.extend(replica_lines(self.live.status.nodes.get(spec.name)))
        return lines

    def _latency_lines(self, s: Step) -> list[Line]:
        if self.live is None:
            return []
        lat = self.live.latency.get(s.name)
        if lat is None:
            return [("no recent calls", MUTED)]
        text = f"p50 {duration(lat.p50_s)}, p99 {duration(lat.p99_s)}"
        return [(text, BAD if lat.errors else INK)]

    # -- edges ---------------------------------------------------------------------------------
    def _edges(self) -> list[_Edge]:
        edges: dict[tuple[Any, ...], _Edge] = {}

        def add(ref: int, head: str, slot: str | None, *, head_port: str | None = None, dashed: bool = False) -> None:
            """An edge from where ``ref``'s value comes from to ``head``; ``slot`` says where it goes."""
            origin, path = self._origin(ref)
            tail = self.steps[origin]
            tail_port = None
            if tail.kind == "input" and path and path[0] in self.fields:
                tail_port = f"f{self.fields.index(path[0])}:e"
            selection = path_text(path)
            key = (tail.name, tail_port, head, head_port, selection, dashed)
            edge = edges.get(key)
            if edge is None:
                edge = edges[key] = _Edge(tail.name, tail_port, head, head_port, selection, dashed)
            if slot and slot not in edge.slots:
                edge.slots.append(slot)

        for s in self.steps:
            if s.kind in ("call", "map"):
                params = self._param_names(s)
                for pos, t in enumerate(s.args):
                    # A call's only argument needs no name; otherwise say where each value goes.
                    whole = isinstance(t, Ref) and len(s.args) == 1 and not s.kwargs
                    slot = None if whole else (params[pos] if pos < len(params) else f"arg{pos}")
                    if s.kind == "map" and pos == 0:
                        slot = "each" if slot is None else f"each → {slot}"
                    for ref, inner in refs_with_paths(t):
                        add(ref, s.name, None if slot is None else slot + path_text(inner))
                for kw, t in s.kwargs.items():
                    for ref, inner in refs_with_paths(t):
                        add(ref, s.name, kw + path_text(inner))
            elif s.kind in ("switch", "split"):
                key_step = s.inputs[0] if s.kind == "switch" else s.key.index if isinstance(s.key, Ref) else None
                if key_step is not None:
                    add(key_step, s.name, "key")
                weights = dict(s.weights)
                branches = [(key_text(v) if s.kind == "switch" else f"{v} {percent(weights[v])}", t) for v, t in s.cases]
                if s.has_default:
                    branches.append(("default", s.default))
                for case, t in branches:
                    for ref, inner in refs_with_paths(t):
                        add(ref, s.name, f"{case} {path_text(inner)}" if inner else case, dashed=True)
            elif s.kind == "optional":
                add(s.inputs[0], s.name, "if it succeeds", dashed=True)
        output = self.plan.output
        if isinstance(output, (dict, list, tuple)):
            items = output.items() if isinstance(output, dict) else enumerate(output)
            for i, (key, value) in enumerate(items):
                row = row_key(key, output)
                for ref, inner in refs_with_paths(value):
                    # The port names the top-level key; a deeper place is spelled out on the edge.
                    add(ref, self.output_id, row + path_text(inner) if inner else None, head_port=f"p{i}:w")
        else:
            for ref, _ in refs_with_paths(output):
                add(ref, self.output_id, None)
        return list(edges.values())

    def _origin(self, i: int) -> tuple[int, tuple[Any, ...]]:
        """The drawn step a value comes from, and the keys selected from it on the way."""
        path: list[Any] = []
        while self.steps[i].kind == "select":
            path.append(self.steps[i].key)
            i = self.steps[i].inputs[0]
        return i, tuple(reversed(path))

    def _param_names(self, s: Step) -> list[str]:
        """Positional parameter names of the function or method a call step calls."""
        spec = self.specs[s.deployment]  # type: ignore[index]
        fn = spec.target if spec.kind == "function" else getattr(spec.target, s.method or "__call__", None)
        try:
            params = list(inspect.signature(fn).parameters.values())  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return []
        if spec.kind == "model":
            params = params[1:]  # self
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        names: list[str] = []
        for p in params:
            if p.kind not in positional:
                break
            names.append(p.name)
        return names

    @staticmethod
    def _edge_line(e: _Edge) -> str:
        tail = quote(e.tail) + (f":{e.tail_port}" if e.tail_port else "")
        head = quote(e.head) + (f":{e.head_port}" if e.head_port else "")
        label = " → ".join(p for p in (e.selection, ", ".join(e.slots)) if p)
        attrs = []
        if label:
            attrs.append(f"label=<{html_escape(label)}>")
        if e.dashed:
            attrs.append("style=dashed")
        return f"  {tail} -> {head}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";"
