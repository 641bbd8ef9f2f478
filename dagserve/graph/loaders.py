"""Multiplexed model classes in the graph model: the loader a class declares with
``@dagserve.multiplexed`` (runtime/multiplex.py marks it) and the ``model_id=`` of calls to it.

Kept apart from ``nodes.py`` and free of it (the node classes use these), so ``runtime/`` can
mark loaders without the graph model importing the runtime.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from dagserve._errors import GraphError

__all__ = ["LOADER_ATTR", "MAX_MODEL_ID_LENGTH", "loader_of", "take_model_id", "valid_model_id"]

#: What marks a multiplexed loader method (set by dagserve.multiplexed).
LOADER_ATTR = "__dagserve_multiplexed__"
MAX_MODEL_ID_LENGTH = 256


def valid_model_id(value: Any) -> bool:
    """Is ``value`` a model id: a non-empty string of at most 256 printable characters?"""
    return isinstance(value, str) and 0 < len(value) <= MAX_MODEL_ID_LENGTH and value.isprintable()


def loader_of(cls: type) -> tuple[str, int] | None:
    """The class's multiplexed loader: ``(method name, max_models_per_replica)``, or ``None``.
    Two loaders on one class are a :class:`GraphError` (which would a call's model come from?)."""
    found = []
    names = sorted({name for base in cls.__mro__[:-1] for name in vars(base)})
    for name in names:
        value = inspect.getattr_static(cls, name, None)
        limit = getattr(value, LOADER_ATTR, None) if not isinstance(value, type) else None
        if isinstance(limit, int):
            found.append((name, limit))
    if len(found) > 1:
        listed = ", ".join(repr(n) for n, _ in found)
        raise GraphError(
            f"Model class {cls.__name__!r} has {len(found)} @dagserve.multiplexed loaders ({listed}); a class has "
            "one loader, which every call's model_id= selects a model of."
        )
    return found[0] if found else None


def take_model_id(
    label: str, method: Callable[..., Any], kwargs: dict[str, Any], is_node: bool
) -> tuple[Any, dict[str, Any]]:
    """A call to a multiplexed class: its ``model_id=`` (required: a graph node, ``is_node``, or
    a constant id) and the other keywords, which go to ``method``."""
    if "model_id" in inspect.signature(method).parameters:
        raise GraphError(
            f"Node {label!r} is multiplexed, so dagserve consumes its model_id= and the method never "
            "receives it; drop the parameter and read the id with dagserve.model_id()."
        )
    if "model_id" not in kwargs:
        raise GraphError(
            f"Node {label!r} is multiplexed (its class has a @dagserve.multiplexed loader): call it with "
            "model_id=..., e.g. node(x, model_id=inp['tenant'])."
        )
    value = kwargs["model_id"]
    if not is_node and not valid_model_id(value):
        raise GraphError(
            f"Node {label!r} got model_id={value!r}; a model id is a non-empty string of at most "
            f"{MAX_MODEL_ID_LENGTH} printable characters, or a graph node that gives one per request."
        )
    return value, {k: v for k, v in kwargs.items() if k != "model_id"}
