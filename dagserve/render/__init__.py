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

from pathlib import Path
from typing import TYPE_CHECKING

from dagserve._errors import RenderError
from dagserve.compiler.plan import Plan
from dagserve.graph import Graph

if TYPE_CHECKING:
    from dagserve.app import App

from dagserve.render.diagram import _Diagram, _Live, _plan_of
from dagserve.render.graphviz import FORMATS, _format_for, _run_dot, _svg

__all__ = ["FORMATS", "live_dot", "live_svg", "render", "to_dot", "to_svg"]




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
