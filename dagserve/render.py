"""Diagrams of graphs: DOT source built from the compiled plan, drawn by Graphviz's ``dot``.

The picture reads left to right: the input (with its schema's fields) on the left, the output on
the right. Call steps are boxes (models blue, business logic yellow with round corners, inline
nodes dashed) carrying their options in force; steps that share one deployment (a model
instance called in several places or through several methods) sit together in a cluster that
carries the deployment's options. Switch and split are diamonds; the branches flowing into them
are dashed and labelled with their case or weight. Select steps are not drawn: the edge that
carries a selection is labelled with it (``["text"]``), and an edge into a named argument with
the argument's name.

The DOT text is deterministic (the same graph gives the same text), so it can be diffed and
tested. Only :func:`render`, :func:`to_svg` and :func:`live_svg` need the ``dot`` program.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagserve._errors import GraphvizNotFoundError, RenderError
from dagserve.graph import Graph
from dagserve.compiler.plan import DeploymentSpec, Plan, Ref, Step

if TYPE_CHECKING:
    from dagserve.app import App
    from dagserve.observe.stats import Latency
    from dagserve.runtime.status import AppStatus, NodeStatus

__all__ = ["FORMATS", "live_dot", "live_svg", "render", "to_dot", "to_svg"]

#: Output format by file suffix.
FORMATS: dict[str, str] = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}
#: A ``dot`` run taking longer than this fails with RenderError (200 nodes take about a second).
DOT_TIMEOUT_S = 60.0

_INSTALL_HINT = (
    "Install Graphviz (Debian/Ubuntu: `sudo apt-get install graphviz`; macOS: `brew install graphviz`; "
    "conda: `conda install -c conda-forge graphviz`), or write DOT source instead with graph.to_dot() "
    "or a .dot path."
)

# Colours: fills by kind, one pen colour, and replica states.
_INK = "#334155"
_MUTED = "#64748b"
_FILL = {"model": "#dbeafe", "function": "#fef3c7", "io": "#dcfce7", "route": "#f3e8ff"}
_CLUSTER_FILL = {"model": "#eff6ff", "function": "#fffbeb"}
_OK, _WARN, _BAD = "#15803d", "#b45309", "#b91c1c"
_KIND_TEXT = {"model": "model", "function": "business logic"}


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def to_dot(graph: Graph | Plan) -> str:
    """DOT source of ``graph``'s diagram (or of an already compiled plan).

    Deterministic: the same graph gives the same text. Needs no Graphviz installation::

        print(graph.to_dot())
    """
    return _Diagram(_plan_of(graph)).dot()


def render(graph: Graph | Plan, path: str | Path, *, format: str | None = None) -> Path:  # noqa: A002
    """Write ``graph``'s diagram to ``path`` and return the path.

    The format follows the suffix (``.svg``, ``.png``, ``.pdf``; ``.dot``/``.gv`` write the DOT
    source and need no Graphviz), or ``format`` when given. Raises
    :class:`~dagserve.GraphvizNotFoundError` when an image is asked for and ``dot`` is missing.
    """
    path = Path(path)
    fmt = _format_for(path, format)
    source = to_dot(graph)
    if fmt == "dot":
        path.write_text(source, encoding="utf-8")
        return path
    if not path.parent.is_dir():
        raise RenderError(f"Cannot write {str(path)!r}: the directory {str(path.parent)!r} does not exist.")
    path.write_bytes(_run_dot(source, fmt))
    return path


def to_svg(graph: Graph | Plan) -> str:
    """``graph``'s diagram as SVG text (what a notebook shows for a Graph)."""
    return _svg(to_dot(graph))


def live_dot(app: App) -> str:
    """DOT source of a deployed App's diagram with live numbers.

    Each deployment shows its running/target replicas (from ``app.status()``) and each step its
    recent p50/p99 latency (from :func:`dagserve.observe.stats.stats_for`, installed on first use, so
    the first picture of an App has no latencies yet).
    """
    from dagserve.observe.stats import stats_for

    stats = stats_for(app)
    live = _Live(status=app.status(), latency=stats.nodes(), requests=stats.requests(), window_s=stats.window_s)
    return _Diagram(app.plan, live).dot()


def live_svg(app: App) -> str:
    """:func:`live_dot` drawn as SVG (served at ``GET /-/graph.svg``).

    It runs ``dot`` in a subprocess and blocks for tens of milliseconds: call it from a thread
    (e.g. Starlette's ``run_in_threadpool``), not on an event loop.
    """
    return _svg(live_dot(app))


# --------------------------------------------------------------------------------------------
# Running dot
# --------------------------------------------------------------------------------------------


def _dot_executable() -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizNotFoundError(
            f"Drawing a diagram needs Graphviz's `dot` program, which is not on PATH. {_INSTALL_HINT}"
        )
    return exe


def _format_for(path: Path, format: str | None) -> str:  # noqa: A002
    if format is not None:
        fmt = format.lower().lstrip(".")
        if fmt not in set(FORMATS.values()):
            raise RenderError(f"Unknown diagram format {format!r}; use one of: svg, png, pdf, dot.")
        return fmt
    fmt_or_none = FORMATS.get(path.suffix.lower())
    if fmt_or_none is None:
        raise RenderError(
            f"Cannot tell the diagram format from {str(path)!r}; end the path with .svg, .png, .pdf or .dot, "
            "or pass format=."
        )
    return fmt_or_none


def _run_dot(source: str, fmt: str) -> bytes:
    exe = _dot_executable()
    try:
        done = subprocess.run(
            [exe, f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True, timeout=DOT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise RenderError(
            f"Graphviz's dot did not finish drawing within {DOT_TIMEOUT_S:g} s; the graph may be too large to draw."
        ) from None
    except OSError as exc:
        raise RenderError(f"Could not run Graphviz's dot at {exe!r}: {exc}. {_INSTALL_HINT}") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip()[-600:]
        raise RenderError(
            f"Graphviz's dot failed (exit code {done.returncode}) drawing {fmt}: {detail or 'no message'}"
        )
    return done.stdout


@functools.lru_cache(maxsize=8)
def _svg(source: str) -> str:
    # Cached by source: a notebook re-displaying a graph, or a live view polled while nothing
    # changed, does not start dot again.
    return _run_dot(source, "svg").decode("utf-8")


# --------------------------------------------------------------------------------------------
# Building DOT
# --------------------------------------------------------------------------------------------


#: One line of a node label: (text, colour); the colour "" marks the bold name.
_Line = tuple[str, str]


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
            if s.kind == "call" and s.deployment is not None:
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
        title = f"<b>{_h(self.plan.graph_name)}</b>{left}"
        notes = [self.plan.description] if self.plan.description else []
        if self.live is not None:
            notes.append(self._live_title())
        if notes:
            title += f'<font point-size="10" color="{_MUTED}">' + "".join(_h(n) + left for n in notes) + "</font>"
        out = [
            f"digraph {_q(self.plan.graph_name)} {{",
            f'  graph [rankdir=LR, fontname="Helvetica", fontsize=13, label=<{title}>, labelloc=t, labeljust=l, '
            'nodesep=0.3, ranksep=0.5, pad=0.2];',
            f'  node [fontname="Helvetica", fontsize=11, shape=box, style="filled", color="{_INK}", '
            'margin="0.14,0.07"];',
            f'  edge [fontname="Helvetica", fontsize=9, color="{_MUTED}", fontcolor="{_INK}", arrowsize=0.7];',
        ]
        done: set[str] = set()
        for s in self.steps:
            if s.kind == "input":
                out.append(self._input_node(s))
            elif s.kind == "call":
                assert s.deployment is not None  # every call step names its deployment
                if s.deployment in done:
                    continue
                done.add(s.deployment)
                spec = self.specs[s.deployment]
                calls = self.calls_of[s.deployment]
                out.extend(self._cluster(spec, calls) if len(calls) > 1 else [self._call_node(s, spec, solo=True)])
            elif s.kind in ("switch", "split"):
                out.append(self._route_node(s))
        out.append(self._output_node())
        out.extend(self._edge_line(e) for e in self._edges())
        out.append("}")
        return "\n".join(out) + "\n"

    def _live_title(self) -> str:
        assert self.live is not None
        req = self.live.requests
        if req is None:
            return "live: no requests recorded yet"
        return (
            f"live: {req.count} requests in the last {_duration(self.live.window_s)}, p50 {_duration(req.p50_s)}, "
            f"p99 {_duration(req.p99_s)}, {req.errors} failed"
        )

    # -- nodes ---------------------------------------------------------------------------------
    def _input_node(self, s: Step) -> str:
        schema = self.plan.input_schema
        head = "<b>input</b>" if schema is None else f"<b>input</b>: {_h(schema.__name__)}"
        rows = [f"<tr><td>{head}</td></tr>"]
        if schema is not None:
            for i, (fname, info) in enumerate(schema.model_fields.items()):
                text = f"{fname}: {_type_name(info.annotation)}"
                if not info.is_required() and info.default_factory is None:
                    text += f" = {_short(_key(info.default), 24)}"
                rows.append(f'<tr><td port="f{i}" align="left">{_h(text)}</td></tr>')
        return f"  {_q(s.name)} [shape=plain, style=solid, label=<{_io_table(rows)}>];"

    def _output_node(self) -> str:
        rows = ["<tr><td><b>output</b></td></tr>"]
        output = self.plan.output
        if isinstance(output, (dict, list, tuple)):
            items = output.items() if isinstance(output, dict) else enumerate(output)
            for i, (key, value) in enumerate(items):
                text = _row_key(key, output)
                if not _has_ref(value):
                    text += f" = {_short(_key(value), 24)}"
                rows.append(f'<tr><td port="p{i}" align="left">{_h(text)}</td></tr>')
        return f"  {_q(self.output_id)} [shape=plain, style=solid, label=<{_io_table(rows)}>];"

    def _call_node(self, s: Step, spec: DeploymentSpec, *, solo: bool) -> str:
        lines: list[_Line] = [(s.name, "")]
        if solo:
            lines.extend(self._deployment_lines(spec))
        lines.extend(self._latency_lines(s))
        style = "rounded,filled" if spec.kind == "function" else "filled"
        if spec.inline:
            style += ",dashed"
        return f'  {_q(s.name)} [style="{style}", fillcolor="{_FILL[spec.kind]}", label=<{_label(lines)}>];'

    def _cluster(self, spec: DeploymentSpec, calls: list[Step]) -> list[str]:
        lines: list[_Line] = [(spec.name, ""), *self._deployment_lines(spec)]
        style = "rounded,filled" + (",dashed" if spec.inline else "")
        out = [
            f"  subgraph {_q('cluster_' + spec.name)} {{",
            f'    graph [label=<{_label(lines)}>, labeljust=l, style="{style}", '
            f'fillcolor="{_CLUSTER_FILL[spec.kind]}", color="{_INK}"];',
        ]
        out.extend("  " + self._call_node(s, spec, solo=False) for s in calls)
        out.append("  }")
        return out

    def _route_node(self, s: Step) -> str:
        lines: list[_Line] = [(s.name, "")]
        if s.name.split("#")[0] != s.kind:
            lines.append((s.kind, _MUTED))
        if s.kind == "split" and s.key is not None:
            lines.append(("sticky by key", _MUTED))
        return (
            f'  {_q(s.name)} [shape=diamond, margin="0.02,0.02", fillcolor="{_FILL["route"]}", '
            f"label=<{_label(lines)}>];"
        )

    def _deployment_lines(self, spec: DeploymentSpec) -> list[_Line]:
        kind = _KIND_TEXT[spec.kind] + (", inline" if spec.inline else "")
        lines: list[_Line] = [(kind, _MUTED)]
        lines.extend((text, _MUTED) for text in _option_lines(spec, live=self.live is not None))
        if self.live is not None and not spec.inline:
            lines.extend(_replica_lines(self.live.status.nodes.get(spec.name)))
        return lines

    def _latency_lines(self, s: Step) -> list[_Line]:
        if self.live is None:
            return []
        lat = self.live.latency.get(s.name)
        if lat is None:
            return [("no recent calls", _MUTED)]
        text = f"p50 {_duration(lat.p50_s)}, p99 {_duration(lat.p99_s)}"
        return [(text, _BAD if lat.errors else _INK)]

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
            selection = _path(path)
            key = (tail.name, tail_port, head, head_port, selection, dashed)
            edge = edges.get(key)
            if edge is None:
                edge = edges[key] = _Edge(tail.name, tail_port, head, head_port, selection, dashed)
            if slot and slot not in edge.slots:
                edge.slots.append(slot)

        for s in self.steps:
            if s.kind == "call":
                params = self._param_names(s)
                for pos, t in enumerate(s.args):
                    # A call's only argument needs no name; otherwise say where each value goes.
                    whole = isinstance(t, Ref) and len(s.args) == 1 and not s.kwargs
                    slot = None if whole else (params[pos] if pos < len(params) else f"arg{pos}")
                    for ref, inner in _refs_with_paths(t):
                        add(ref, s.name, None if slot is None else slot + _path(inner))
                for kw, t in s.kwargs.items():
                    for ref, inner in _refs_with_paths(t):
                        add(ref, s.name, kw + _path(inner))
            elif s.kind in ("switch", "split"):
                key_step = s.inputs[0] if s.kind == "switch" else s.key.index if isinstance(s.key, Ref) else None
                if key_step is not None:
                    add(key_step, s.name, "key")
                weights = dict(s.weights)
                branches = [(_key(v) if s.kind == "switch" else f"{v} {_percent(weights[v])}", t) for v, t in s.cases]
                if s.has_default:
                    branches.append(("default", s.default))
                for case, t in branches:
                    for ref, inner in _refs_with_paths(t):
                        add(ref, s.name, f"{case} {_path(inner)}" if inner else case, dashed=True)
        output = self.plan.output
        if isinstance(output, (dict, list, tuple)):
            items = output.items() if isinstance(output, dict) else enumerate(output)
            for i, (key, value) in enumerate(items):
                row = _row_key(key, output)
                for ref, inner in _refs_with_paths(value):
                    # The port names the top-level key; a deeper place is spelled out on the edge.
                    add(ref, self.output_id, row + _path(inner) if inner else None, head_port=f"p{i}:w")
        else:
            for ref, _ in _refs_with_paths(output):
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
        tail = _q(e.tail) + (f":{e.tail_port}" if e.tail_port else "")
        head = _q(e.head) + (f":{e.head_port}" if e.head_port else "")
        label = " → ".join(p for p in (e.selection, ", ".join(e.slots)) if p)
        attrs = []
        if label:
            attrs.append(f"label=<{_h(label)}>")
        if e.dashed:
            attrs.append("style=dashed")
        return f"  {tail} -> {head}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";"


# --------------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------------


def _option_lines(spec: DeploymentSpec, *, live: bool) -> list[str]:
    """The options in force, one short line each (replicas, batching, resources, limits)."""
    o = spec.options
    lines: list[str] = []
    if not spec.inline:
        if o.autoscaling is not None:
            lines.append(f"autoscaling {o.autoscaling.min_replicas}-{o.autoscaling.max_replicas} replicas")
        elif o.num_replicas == "auto":
            lo, hi = o.replica_range()
            lines.append(f"autoscaling {lo}-{hi} replicas")
        elif not live:  # live views show running/target instead
            n = o.num_replicas
            lines.append(f"{n} replica" if n == 1 else f"{n} replicas")
    if o.max_batch_size is not None:
        lines.append(f"batch {o.max_batch_size}, wait {_duration(o.batch_wait_timeout_s)}")
    shares = []
    if o.num_cpus:
        shares.append(f"CPU {o.num_cpus:g}")
    if o.num_gpus:
        shares.append(f"GPU {o.num_gpus:g}")
    if o.memory:
        shares.append(f"mem {_bytes(o.memory)}")
    shares.extend(f"{name} {amount:g}" for name, amount in sorted(o.resources.items()))
    if shares:
        lines.append(", ".join(shares))
    limits = []
    if o.max_ongoing_requests is not None:
        limits.append(f"max ongoing {o.max_ongoing_requests}")
    if o.max_queued_requests is not None:
        limits.append(f"max queued {o.max_queued_requests}")
    if o.timeout_s is not None:
        limits.append(f"timeout {_duration(o.timeout_s)}")
    if o.retries:
        limits.append(f"retries {o.retries}")
    if limits:
        lines.append(", ".join(limits))
    return lines


def _replica_lines(status: NodeStatus | None) -> list[_Line]:
    if status is None:
        return [("replicas unknown", _WARN)]
    text = f"replicas {status.running_replicas}/{status.target_replicas} running"
    if status.pending_replicas:
        text += f", {status.pending_replicas} pending"
    if status.state != "RUNNING":
        text += f" ({status.state.lower()})"
    healthy = status.state == "RUNNING" and status.running_replicas >= status.target_replicas
    color = _BAD if status.state == "UNHEALTHY" else _OK if healthy else _WARN
    lines: list[_Line] = [(text, color)]
    if status.pending_reason:
        lines.append((_short(status.pending_reason, 48), _WARN))
    return lines


def _io_table(rows: list[str]) -> str:
    return (
        f'<table border="1" cellborder="0" cellspacing="0" cellpadding="3" style="rounded" '
        f'bgcolor="{_FILL["io"]}" color="{_INK}">' + "".join(rows) + "</table>"
    )


def _label(lines: list[_Line]) -> str:
    """An HTML-like label: the bold name, then small lines, one font tag per run of one colour."""
    parts = []
    for color, run in itertools.groupby(lines, key=lambda line: line[1]):
        text = "<br/>".join(_h(t) for t, _ in run)
        parts.append(f"<b>{text}</b>" if not color else f'<font point-size="9" color="{color}">{text}</font>')
    return "<br/>".join(parts)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _h(text: str) -> str:
    """Escape text for a Graphviz HTML-like label (text content only, so quotes stay as they are).

    Graphviz still applies its escapes to HTML-like label text (``\\N`` is the node's name,
    ``\\\\`` one backslash), so every backslash is doubled to stay a backslash.
    """
    text = _CONTROL.sub(" ", text)
    return text.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _q(name: str) -> str:
    """A quoted DOT identifier."""
    name = _CONTROL.sub(" ", name)
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(key: Any) -> str:
    """A key as the user would write it: strings in double quotes, others as repr."""
    if isinstance(key, str):
        return json.dumps(key, ensure_ascii=False)
    return repr(key)


def _row_key(key: Any, output: Any) -> str:
    """How the output node names one of its rows: a dict key bare, a list position as ``[i]``."""
    if isinstance(output, dict):
        return key if isinstance(key, str) else repr(key)
    return f"[{key}]"


def _path(keys: tuple[Any, ...]) -> str:
    return "".join(f"[{_key(k)}]" for k in keys)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_ref(template: Any) -> bool:
    return any(True for _ in _refs_with_paths(template))


def _refs_with_paths(template: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """``(step index, path inside the template)`` for every Ref in a template."""
    if isinstance(template, Ref):
        yield template.index, path
    elif isinstance(template, (list, tuple)):
        for i, t in enumerate(template):
            yield from _refs_with_paths(t, (*path, i))
    elif isinstance(template, dict):
        for k, t in template.items():
            yield from _refs_with_paths(t, (*path, k))


_MODULE_PREFIX = re.compile(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not getattr(tp, "__args__", None):
        return tp.__name__
    return _MODULE_PREFIX.sub("", repr(tp).replace("<class '", "").replace("'>", ""))


def _percent(weight: float) -> str:
    return f"{weight * 100:.3g}%"


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    ms = seconds * 1000
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.3g} ms" if ms >= 1 else f"{ms:.2g} ms"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"
