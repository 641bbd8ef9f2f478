"""``dagserve.deploy(graph) -> App``: a running graph you can call, inspect, scale and stop.

The package: :func:`deploy` (here), :class:`App` (``graph_app.py``: one graph's requests),
:class:`AppGroup` (``group.py``: graphs deployed together) and the :class:`Deployment` they run on
(``deployment.py``: the backend, the plan, the home loop, the operations on nodes).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from dagserve._errors import DeployError, GraphError
from dagserve._hooks import hooks
from dagserve._options import DEFAULT_BACKEND, DEFAULT_READY_TIMEOUT_S, DEFAULT_REQUEST_TIMEOUT_S
from dagserve.app.deployment import Deployment
from dagserve.app.graph_app import App
from dagserve.app.group import AppGroup
from dagserve.backends import Backend, get_backend
from dagserve.deploy_config import ConfigSource, compile_with_config
from dagserve.graph import Graph
from dagserve.jobs import JobSettings, JobStore
from dagserve.jobs.host import JobsHost, job_capacity
from dagserve.runtime.streaming import DEFAULT_STREAM_TIMEOUT_S

if TYPE_CHECKING:
    from dagserve.compiler.plan import Plan

__all__ = ["DEFAULT_BACKEND", "DEFAULT_REQUEST_TIMEOUT_S", "App", "AppGroup", "Deployment", "deploy"]


def deploy(
    graph: Graph | list[Graph] | tuple[Graph, ...],
    backend: str | Backend | None = None,
    *,
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    stream_timeout_s: float | None = DEFAULT_STREAM_TIMEOUT_S,
    config: ConfigSource | None = None,
    jobs_store: str | os.PathLike[str] | JobStore | None = None,
    jobs: JobSettings | None = None,
    **backend_options: Any,
) -> App | AppGroup:
    """Compile ``graph`` and bring it up on ``backend``; returns the running :class:`App` (an
    :class:`AppGroup` of one App per graph for a list).

    ``backend`` is ``"ray"`` (Ray Serve, the default) or ``"local"`` (in-process, no Ray), or a
    backend instance; ``backend_options`` go to the backend (for Ray: ``address=``, ``num_gpus=`` ...)::

        with dagserve.deploy(graph, backend="local") as app:
            print(app.call({"text": "hello"}))

    Several graphs (a list) are one :class:`AppGroup`: ``group.call(payload, graph="name")``,
    ``group.asgi()`` routes to each by name, and a node several of them use is deployed once (one
    set of replicas).

    ``stream_timeout_s`` bounds a whole stream of a graph whose output streams (docs/streaming.md).
    ``config`` (a path to a YAML config file, or a dict of the same shape) overrides node options
    set in code: ``graphs: {<graph name>: {nodes: {<node>: {num_replicas: 3}}}}`` (docs/deploy.md).

    ``jobs_store`` keeps the jobs of ``app.submit`` (docs/jobs.md): ``None`` in memory for the App's
    life, a SQLite file path or ``redis://HOST:PORT/DB`` durably; ``jobs`` sets how they run.

    Raises :class:`~dagserve.CompileError` for an invalid graph, :class:`~dagserve.OptionsError`
    for a config naming an unknown graph, node or option, and
    :class:`~dagserve.DeployError` when deployments are not ready within ``ready_timeout_s``.
    """
    graphs, plan, per_graph = _compile(graph, config)
    be = get_backend(backend or DEFAULT_BACKEND, **backend_options)
    if graphs and getattr(be, "ingress_replicas", None) is not None:
        raise DeployError(
            "Several graphs deployed together are served by this process (app.asgi(), dagserve.serve); "
            "ingress_replicas=N serves one graph: deploy each graph on its own for that."
        )
    try:
        be.deploy(plan, ready_timeout_s=ready_timeout_s)
    except BaseException:
        with contextlib.suppress(Exception):
            be.shutdown()
        raise
    timeouts = {"request_timeout_s": request_timeout_s, "stream_timeout_s": stream_timeout_s}
    shared = Deployment(be, plan)
    if not graphs:
        apps = {plan.graph_name: App(graph, plan, be, **timeouts, deployment=shared)}
    else:
        apps = {g.name: App(g, p, be, **timeouts, deployment=shared) for g, p in zip(graphs, per_graph, strict=True)}

    async def run_job(payload: Any, name: str, ctx: Any) -> Any:
        return await apps[name].acall(payload, context=ctx)

    shared.jobs = JobsHost(
        jobs_store, jobs or JobSettings(), graphs=list(apps), capacity=job_capacity(plan), run=run_job,
        home_loop=shared.home_loop, encode=hooks.need("dump_json"), in_flight=lambda: sum(a.in_flight for a in apps.values()),
    )
    return next(iter(apps.values())) if not graphs else AppGroup(shared, apps)


def _compile(graph: Any, config: ConfigSource | None) -> tuple[list[Graph], Plan, list[Plan]]:
    """(the graphs of a list, the plan to deploy, each graph's plan); one graph: ([], its plan, [])."""
    if isinstance(graph, Graph):
        return [], compile_with_config(graph, config), []
    if not isinstance(graph, (list, tuple)):
        raise GraphError(f"dagserve.deploy takes a dagserve.Graph, got {type(graph).__name__}.")
    bad = [type(g).__name__ for g in graph if not isinstance(g, Graph)]
    if bad or not graph:
        raise GraphError(f"dagserve.deploy takes a list of dagserve.Graph objects, got {bad or 'an empty list'}.")
    from dagserve.compiler.shared import share_deployments

    names = [g.name for g in graph]
    plan, per_graph = share_deployments([compile_with_config(g, config, others=names) for g in graph])
    return list(graph), plan, per_graph
