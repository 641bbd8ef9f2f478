"""Several graphs as one App (issue 18, item 5): ``dagserve.deploy([graph_a, graph_b])``.

Each graph compiles on its own; :func:`share_deployments` then makes one set of deployments for
all of them: a model instance or function node that several graphs use is one deployment (one
set of replicas, its weights loaded once, its state shared), called on every method any of them
calls; deployments of different nodes that happen to share a name get a suffix, as within one
graph. It returns the plan the backend deploys (every deployment, no steps) and each graph's
plan, its steps pointing at the shared deployments.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dagserve._errors import CompileError
from dagserve.compiler.handle_refs import HandleRef
from dagserve.compiler.plan import DeploymentSpec, Plan
from dagserve.graph.leaves import map_leaves

__all__ = ["share_deployments"]


def share_deployments(plans: list[Plan]) -> tuple[Plan, list[Plan]]:
    """(the plan of every deployment, each graph's plan on those deployments)."""
    names = [p.graph_name for p in plans]
    if not plans:
        raise CompileError("dagserve.deploy([...]) got no graphs; pass at least one dagserve.Graph.")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CompileError(
            f"Several graphs are named {', '.join(map(repr, twice))}; graphs served together are called by "
            "name, so give each its own (dagserve.Graph(..., name=...))."
        )
    merged: dict[str, DeploymentSpec] = {}
    by_source: dict[int, str] = {}
    renames: list[dict[str, str]] = []
    origin: dict[str, int] = {}  # deployment -> the plan it came from (its handle refs use that plan's names)
    for i, plan in enumerate(plans):
        rename: dict[str, str] = {}
        for spec in plan.deployments:
            name = by_source.get(id(spec.source)) if spec.source is not None else None
            if name is None:
                name, k = spec.name, 1
                while name in merged:
                    k += 1
                    name = f"{spec.name}_{k}"
                merged[name] = replace(spec, name=name)
                origin[name] = i
                if spec.source is not None:
                    by_source[id(spec.source)] = name
            else:  # used by an earlier graph too: every method either calls
                have = merged[name]
                merged[name] = replace(
                    have,
                    methods=tuple(dict.fromkeys((*have.methods, *spec.methods))),
                    async_methods=have.async_methods | spec.async_methods,
                )
            rename[spec.name] = name
        renames.append(rename)
    merged = {n: _renamed_spec(s, renames[origin[n]]) for n, s in merged.items()}
    graphs = [_renamed_plan(p, r, merged) for p, r in zip(plans, renames, strict=True)]
    calls = tuple(dict.fromkeys(c for g in graphs for c in g.calls))
    whole = Plan(
        graph_name="+".join(names),
        input_schema=None,
        steps=(),
        deployments=tuple(merged.values()),
        edges=(),
        output=None,
        description=f"graphs {', '.join(names)} served together",
        calls=calls,
    )
    return whole, graphs


def _renamed_spec(spec: DeploymentSpec, rename: dict[str, str]) -> DeploymentSpec:
    if spec.kind != "model" or all(a == b for a, b in rename.items()):
        return spec
    return replace(spec, init_args=_refs(spec.init_args, rename), init_kwargs=_refs(dict(spec.init_kwargs), rename))


def _renamed_plan(plan: Plan, rename: dict[str, str], merged: dict[str, DeploymentSpec]) -> Plan:
    if all(a == b for a, b in rename.items()):
        steps = plan.steps
    else:
        steps = tuple(
            replace(s, deployment=rename[s.deployment], args=_refs(s.args, rename), kwargs=_refs(dict(s.kwargs), rename))
            if s.deployment is not None
            else s
            for s in plan.steps
        )
    return replace(
        plan,
        steps=steps,
        deployments=tuple(merged[rename[d.name]] for d in plan.deployments),
        calls=tuple((rename[a], rename[b]) for a, b in plan.calls),
    )


def _refs(value: Any, rename: dict[str, str]) -> Any:
    def renamed(v: Any) -> Any:
        return replace(v, deployment=rename.get(v.deployment, v.deployment)) if isinstance(v, HandleRef) else v

    return map_leaves(value, renamed)
