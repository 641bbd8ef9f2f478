"""``MODULE:ATTR`` targets on the command line (``dagserve run examples.quickstart:graph``)."""

from __future__ import annotations

from typing import Any

import click

from dagserve._errors import DagserveError, GraphError
from dagserve.deploy_config import import_target
from dagserve.graph import Graph
from dagserve.http.server import check_unique_names

__all__ = ["load_graphs", "load_target"]


def load_target(spec: str) -> Any:
    """Import ``MODULE:ATTR`` (e.g. ``examples.quickstart:graph``) and return the attribute.

    The current directory is put on ``sys.path`` so project modules import as they do in Python.
    Raises :class:`click.BadParameter` with what went wrong and how to fix it.
    """
    try:
        return import_target(spec)
    except DagserveError as exc:
        raise click.BadParameter(str(exc)) from None


def load_graphs(target: str) -> list[Graph]:
    """The graphs at ``MODULE:ATTR``: a :class:`~dagserve.Graph` or a list of them (names unique)."""
    obj = load_target(target)
    if isinstance(obj, Graph):
        return [obj]
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(g, Graph) for g in obj):
        try:
            check_unique_names(obj)  # before anything deploys
        except GraphError as exc:
            raise click.BadParameter(f"{target}: {exc}", param_hint="MODULE:ATTR") from None
        return list(obj)
    raise click.BadParameter(
        f"{target} is a {type(obj).__name__}, not a dagserve.Graph or a list of Graphs.", param_hint="MODULE:ATTR"
    )
