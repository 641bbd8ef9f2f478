"""Routing nodes: ``switch`` (by a value) and ``split`` (by weight), and the nodes they record."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from dagserve._errors import GraphError
from dagserve.graph.nodes import MISSING, Node, nodes_in

__all__ = ["SplitNode", "SwitchNode", "split", "switch"]


class SwitchNode(Node):
    """Routes on ``key``'s value; only the chosen case's nodes run."""

    __slots__ = ("cases", "default", "key", "name")

    def __init__(self, key: Node, cases: dict[Hashable, Any], default: Any, name: str | None) -> None:
        super().__init__()
        self.key = key
        self.cases = cases
        self.default = default
        self.name = name

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING

    def dependencies(self) -> tuple[Node, ...]:
        branches = list(self.cases.values()) + ([self.default] if self.has_default else [])
        return (self.key, *nodes_in(branches))

    def describe(self) -> str:
        return f"switch({self.key.describe()})"


class SplitNode(Node):
    """Weighted routing between branches: random per request, or sticky by ``key``."""

    __slots__ = ("branches", "key", "name", "seed", "weights")

    def __init__(
        self,
        branches: dict[str, Any],
        weights: dict[str, float],
        key: Node | None,
        seed: int | None,
        name: str | None,
    ) -> None:
        super().__init__()
        self.branches = branches
        self.weights = weights
        self.key = key
        self.seed = seed
        self.name = name

    def dependencies(self) -> tuple[Node, ...]:
        keyed = (self.key,) if self.key is not None else ()
        return (*keyed, *nodes_in(list(self.branches.values())))

    def describe(self) -> str:
        return "split(" + ", ".join(f"{k}={w:g}" for k, w in self.weights.items()) + ")"


def switch(key: Node, cases: Mapping[Hashable, Any], default: Any = MISSING, *, name: str | None = None) -> SwitchNode:
    """Route on ``key``'s value: the result is the chosen case's value.

    Only the chosen case runs: nodes that only other cases need are never executed::

        out = dagserve.switch(lang, {"en": english(text), "de": german(text)}, default=fallback(text))

    Without ``default``, a value that matches no case fails the request with
    :class:`~dagserve.NoRouteError` (HTTP 422).
    """
    if not isinstance(key, Node):
        raise GraphError(
            f"switch(key, ...) needs a graph node as its key (the value to route on), got {key!r}."
        )
    if not isinstance(cases, Mapping) or not cases:
        raise GraphError("switch(key, cases) needs a non-empty dict mapping each value to a branch.")
    for k in cases:
        if isinstance(k, Node):
            raise GraphError("switch cases are keyed by constant values, not nodes.")
    return SwitchNode(key, dict(cases), default, name)


def split(
    branches: Mapping[str, Any],
    weights: Mapping[str, float] | Sequence[float],
    *,
    key: Node | None = None,
    seed: int | None = None,
    name: str | None = None,
) -> SplitNode:
    """Weighted routing between branches (canary, A/B); only the chosen branch runs.

    ``weights`` are relative (90/10 and 0.9/0.1 mean the same). Without ``key`` each request is
    routed at random; with ``key`` (e.g. ``inp["user_id"]``) the choice is sticky: a stable hash of
    the key's value, so one user always sees the same branch. ``seed`` (an int) makes the random
    choice reproducible: the n-th request reaching the split in an App takes the same branch in
    every deployment with that seed; with ``key`` it salts the hash, so experiments with other
    seeds bucket users independently (docs/graphs.md)::

        out = dagserve.split({"stable": v1(x), "canary": v2(x)}, {"stable": 90, "canary": 10})
    """
    if not isinstance(branches, Mapping) or not branches:
        # One branch (weight 100) is KServe's one-step splitter: legitimate, if trivial.
        raise GraphError("split(branches, weights) needs a dict of named branches.")
    labels = list(branches)
    for label in labels:
        if not isinstance(label, str) or not label:
            raise GraphError(f"split branch labels are non-empty strings, got {label!r}.")
    if isinstance(weights, Mapping):
        if set(weights) != set(labels):
            raise GraphError(
                f"split weights name {sorted(weights)!r} but the branches are {sorted(labels)!r}; "
                "give one weight per branch."
            )
        raw = {label: weights[label] for label in labels}
    else:
        weights = list(weights)
        if len(weights) != len(labels):
            raise GraphError(f"split got {len(weights)} weights for {len(labels)} branches; give one per branch.")
        raw = dict(zip(labels, weights, strict=True))
    for label, w in raw.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or w != w:
            raise GraphError(f"split weight for {label!r} must be a number >= 0, got {w!r}.")
    total = float(sum(raw.values()))
    if total <= 0:
        raise GraphError("split weights add up to 0; give at least one branch a positive weight.")
    if key is not None and not isinstance(key, Node):
        raise GraphError(f"split(key=...) takes a graph node such as inp['user_id'], got {key!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise GraphError(f"split(seed=...) takes an int, got {seed!r}.")
    return SplitNode(dict(branches), {k: v / total for k, v in raw.items()}, key, seed, name)
