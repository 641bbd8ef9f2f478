"""Nested values (lists, tuples, dicts) leaf by leaf: one walk for the passes that rewrite them
(graphs copied into graphs, handles lowered to refs and refs made handles)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["any_leaf", "map_leaves"]


def map_leaves(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``value`` with every leaf replaced by ``fn(leaf)`` (dict keys kept, containers copied)."""
    if isinstance(value, list):
        return [map_leaves(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(map_leaves(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_leaves(v, fn) for k, v in value.items()}
    return fn(value)


def any_leaf(value: Any, test: Callable[[Any], bool]) -> bool:
    """Does ``test`` hold for some leaf of ``value``?"""
    if isinstance(value, (list, tuple)):
        return any(any_leaf(v, test) for v in value)
    if isinstance(value, dict):
        return any(any_leaf(v, test) for v in value.values())
    return test(value)
