"""``MODULE:ATTR`` targets on the command line (``dagserve run examples.quickstart:graph``)."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

__all__ = ["load_target"]


def load_target(spec: str) -> Any:
    """Import ``MODULE:ATTR`` (e.g. ``examples.quickstart:graph``) and return the attribute.

    The current directory is put on ``sys.path`` so project modules import as they do in Python.
    Raises :class:`click.BadParameter` with what went wrong and how to fix it.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(f"{spec!r} is not MODULE:ATTR, e.g. examples.quickstart:graph.")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import module {module_name!r}: {exc}.") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise click.BadParameter(f"module {module_name!r} has no attribute {attr!r}.") from None
    return obj
