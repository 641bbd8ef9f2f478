"""``MODULE:ATTR`` targets on the command line (``dagserve run examples.quickstart:graph``), and
the error a command raises about its input."""

from __future__ import annotations

from typing import Any

import click

from dagserve._errors import DagserveError, GraphError
from dagserve.deploy_config import import_target
from dagserve.graph import Graph
from dagserve.http.server import check_unique_names

__all__ = ["InputError", "app_dir_option", "load_graphs", "load_target"]


class InputError(click.ClickException):
    """Something the user gave (a target, a config file) is wrong: exit status 2 like a usage
    error, but the message alone, without click's ``Usage:`` block (the usage was right)."""

    exit_code = 2

    def __init__(self, message: str, param_hint: str | None = None) -> None:
        super().__init__(f"Invalid value for {param_hint}: {message}" if param_hint else message)


def app_dir_option(fn: Any) -> Any:
    """``--app-dir DIR``: where ``MODULE`` is looked up first (default: the current directory)."""
    return click.option(
        "--app-dir",
        type=click.Path(exists=True, file_okay=False),
        default=None,
        metavar="DIR",
        help="Look for MODULE in DIR first (default: the current directory), like uvicorn's --app-dir.",
    )(fn)


def load_target(spec: str, app_dir: str | None = None) -> Any:
    """Import ``MODULE:ATTR`` (e.g. ``examples.quickstart:graph``) and return the attribute.

    ``app_dir`` (default: the current directory) is put on ``sys.path`` so project modules import
    as they do in Python. Raises :class:`InputError` with what went wrong and how to fix it.
    """
    try:
        return import_target(spec, app_dir=app_dir)
    except DagserveError as exc:
        raise InputError(str(exc), "MODULE:ATTR") from None


def load_graphs(target: str, app_dir: str | None = None) -> list[Graph]:
    """The graphs at ``MODULE:ATTR``: a :class:`~dagserve.Graph` or a list of them (names unique)."""
    obj = load_target(target, app_dir)
    if isinstance(obj, Graph):
        return [obj]
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(g, Graph) for g in obj):
        try:
            check_unique_names(obj)  # before anything deploys
        except GraphError as exc:
            raise InputError(f"{target}: {exc}", "MODULE:ATTR") from None
        return list(obj)
    raise InputError(f"{target} is a {type(obj).__name__}, not a dagserve.Graph or a list of Graphs.", "MODULE:ATTR")
