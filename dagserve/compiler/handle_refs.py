"""The compile pass for handles (issue 18, item 1): deployments that nodes call from their code.

A model instance or function node found in another model's constructor arguments, or among a
node call's arguments, is a *handle*: it becomes a deployment of the plan like any other (named
in order of appearance, after the graph's own), even when no graph step calls it, and the place
that held it gets a :class:`HandleRef` naming that deployment (the backend turns it into a live
:class:`~dagserve.runtime.handles.Handle`). ``Plan.calls`` lists who holds whom, for diagrams;
a cycle of handles is a :class:`~dagserve.CompileError`. A deployment reached through handles
can be called on any public method, so its spec lists them all.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any

from dagserve._errors import CompileError
from dagserve.compiler.plan import DeploymentSpec, Step
from dagserve.graph import CallNode, FunctionNode, ModelInstance, Node
from dagserve.graph.leaves import map_leaves
from dagserve.graph.nodes import walk

__all__ = ["HandleRef", "add_handle_targets", "check_handle_cycles", "lower_handles", "spec_with_handles"]


@dataclass(frozen=True, slots=True)
class HandleRef:
    """Where a handle goes: the deployment it calls (a template leaf and constructor argument),
    and for callers in other processes (Ray replicas) that deployment's ``timeout_s`` and, when
    its replica count is fixed, its ``(max_ongoing, max_queued)`` bounds (its calls may then skip
    Serve's router: ``NodeOptions.fixed_bounds``)."""

    deployment: str
    timeout_s: float | None = None
    bounds: tuple[int, int | None] | None = None


def _targets(value: Any) -> list[FunctionNode[Any] | ModelInstance]:
    return [v for v in walk(value) if isinstance(v, (FunctionNode, ModelInstance))]


def add_handle_targets(
    deployments: dict[str, FunctionNode[Any] | ModelInstance], dep_of: dict[int, str], nodes: list[Node]
) -> list[tuple[str, str]]:
    """Add every deployment reached through handles (transitively) to ``deployments`` / ``dep_of``;
    return the ``(holder, callee)`` deployment pairs, in order, without duplicates."""
    calls: list[tuple[str, str]] = []
    # (holder deployment name, what it holds) to look through; constructor arguments first.
    todo: list[tuple[str, Any]] = [
        (name, (src.init_args, src.init_kwargs)) for name, src in deployments.items() if isinstance(src, ModelInstance)
    ]
    todo.extend((dep_of[id(n.target)], (n.args, n.kwargs)) for n in nodes if isinstance(n, CallNode))
    while todo:
        holder, held = todo.pop(0)
        for target in _targets(held):
            name = dep_of.get(id(target))
            if name is None:
                name = _unique(target.name, deployments)
                deployments[name] = target
                dep_of[id(target)] = name
                if isinstance(target, ModelInstance):
                    todo.append((name, (target.init_args, target.init_kwargs)))
            if (holder, name) not in calls:
                calls.append((holder, name))
    return calls


def _unique(base: str, taken: dict[str, Any]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def check_handle_cycles(graph_name: str, calls: list[tuple[str, str]]) -> None:
    """A deployment that reaches itself through handles could wait on itself forever."""
    import networkx as nx

    g = nx.DiGraph(calls)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return
    path = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
    raise CompileError(
        f"Graph {graph_name!r} has a cycle of handles: {path}. A deployment that calls itself through "
        "handles can wait for its own replicas forever; break the cycle (pass one of them its inputs instead)."
    )


def lower_handles(value: Any, dep_of: dict[int, str]) -> Any:
    """``value`` with each model instance / function node replaced by its :class:`HandleRef`."""

    def lower(v: Any) -> Any:
        if isinstance(v, (FunctionNode, ModelInstance)):
            return HandleRef(dep_of[id(v)], v.node_options.timeout_s, v.node_options.fixed_bounds())
        return v

    return map_leaves(value, lower)


def lower_step(step: Step, dep_of: dict[int, str]) -> Step:
    if step.kind != "call" or not _targets((step.args, step.kwargs)):
        return step
    return replace(step, args=lower_handles(step.args, dep_of), kwargs=lower_handles(step.kwargs, dep_of))


def spec_with_handles(spec: DeploymentSpec, dep_of: dict[int, str], callees: set[str]) -> DeploymentSpec:
    """Constructor arguments with their handles as refs; every public method for a callee."""
    if spec.kind == "model" and _targets((spec.init_args, dict(spec.init_kwargs))):
        spec = replace(
            spec,
            init_args=lower_handles(spec.init_args, dep_of),
            init_kwargs=lower_handles(dict(spec.init_kwargs), dep_of),
        )
    if spec.name in callees and spec.kind == "model":
        cls = spec.target
        public = [m for m in dir(cls) if (not m.startswith("_") or m == "__call__") and _own_callable(cls, m)]
        if spec.batched:
            # Batched methods take one list: a method with another shape is called unbatched.
            public = [m for m in public if _one_positional(getattr(cls, m))]
        methods = tuple(dict.fromkeys((*spec.methods, *public)))
        every = [m for m in dir(cls) if _own_callable(cls, m)]
        spec = replace(
            spec,
            methods=methods,
            async_methods=frozenset(m for m in every if inspect.iscoroutinefunction(getattr(cls, m))),
        )
    return spec


def _one_positional(fn: Any) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())[1:]  # self
    except (TypeError, ValueError):
        return False
    required = [p for p in params if p.default is p.empty and p.kind is not p.VAR_KEYWORD]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return len(required) == 1 and required[0].kind in positional


def _own_callable(cls: type, method: str) -> bool:
    if method.startswith("__") and method != "__call__":
        return False
    if method == "__call__" and not any("__call__" in vars(b) for b in cls.__mro__[:-1]):
        return False
    fn = inspect.getattr_static(cls, method, None)
    return inspect.isfunction(fn)
