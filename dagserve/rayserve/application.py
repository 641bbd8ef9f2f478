"""A graph as a Ray Serve application that Ray's own tools deploy (``serve deploy``, KubeRay).

``dagserve build MODULE:ATTR -o serve.yaml`` (``dagserve.rayserve.config_files``) writes a Serve
config file whose application Serve builds by calling :func:`build` (``import_path:
dagserve.rayserve.application:build``) with the application's ``args``::

    args:
      target: examples.quickstart:graph   # MODULE:ATTR, importable on the cluster
      graph: reviews                      # which graph, when ATTR is a list of them
      config:                             # a dagserve config file's content (optional)
        graphs: {reviews: {nodes: {Sentiment: {max_batch_size: 8}}}}
        server: {host: 127.0.0.1, max_body_size: 1MiB}

The application is the one ``RayBackend(ingress_replicas=N)`` deploys: every remote node its own
deployment, and dagserve's HTTP ingress as the deployment ``dagserve-ingress`` (the route
root) behind Serve's HTTP proxy. Tokens are never in the file: the ingress takes them from the
cluster's environment (``$DAGSERVE_TOKEN``, ``$DAGSERVE_ADMIN_TOKEN``, set where ``ray start``
runs or from a Kubernetes Secret); without an admin token there are no admin routes.

Importing this module is cheap (Serve imports it in its build task); Ray loads in :func:`build`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagserve._errors import DagserveError, GraphError
from dagserve.deploy_config import compile_with_config, import_target, load_config, suggest
from dagserve.graph import Graph
from dagserve.http.hosts import served_hosts
from dagserve.http.settings import TOKEN_ENV, ServerConfig, resolve_token, server_config

__all__ = ["ARGS", "IMPORT_PATH", "build", "ingress_options", "select_graph"]

#: Where Serve finds the application builder (the ``import_path`` of the files ``dagserve build`` writes).
IMPORT_PATH = "dagserve.rayserve.application:build"
#: The builder's arguments.
ARGS = ("target", "graph", "config")


def build(args: Mapping[str, Any]) -> Any:
    """Serve's application builder: the graph at ``args["target"]`` as a Serve application."""
    from dagserve.backends.ray.backend import RayBackend

    for key in args:
        if key not in ARGS:
            raise DagserveError(f"{IMPORT_PATH} got an unknown argument {key!r}.{suggest(str(key), ARGS)} Valid: {', '.join(ARGS)}.")
    if not isinstance(args.get("target"), str):
        raise DagserveError(f"{IMPORT_PATH} needs args: {{target: MODULE:ATTR}}, e.g. examples.quickstart:graph.")
    graph = select_graph(args["target"], import_target(args["target"]), args.get("graph"))
    config = load_config(args.get("config") or {})
    plan = compile_with_config(graph, config.for_graph(graph.name))
    backend = RayBackend(ingress_replicas=1, ingress_options=ingress_options(server_config(config)))
    return backend.application(plan)


def select_graph(target: str, obj: Any, name: str | None) -> Graph:
    """The graph ``name`` of a Graph or list of Graphs (``name`` may be left out for one graph)."""
    graphs = [obj] if isinstance(obj, Graph) else list(obj) if isinstance(obj, (list, tuple)) else []
    if not graphs or not all(isinstance(g, Graph) for g in graphs):
        raise GraphError(f"{target} is a {type(obj).__name__}, not a dagserve.Graph or a list of Graphs.")
    if name is None:
        if len(graphs) > 1:
            raise GraphError(f"{target} holds several graphs; name one: args: {{graph: NAME}}.")
        return graphs[0]
    for g in graphs:
        if g.name == name:
            return g
    names = [g.name for g in graphs]
    raise GraphError(f"{target} has no graph {name!r}.{suggest(name, names)} Graphs: {', '.join(names)}.")


def ingress_options(server: ServerConfig) -> dict[str, Any]:
    """The ingress deployment's options (``RayBackend(ingress_options=...)``) from a ``server:``
    section. The proxy's host decides, as for ``dagserve run``, whether only loopback ``Host``
    names are answered (on loopback without a request token)."""
    out: dict[str, Any] = {}
    pairs = (
        ("max_body_size", "max_body_bytes"),
        ("body_timeout", "body_timeout_s"),
        ("max_in_flight", "max_in_flight"),
        ("debug", "debug"),
        ("request_timeout", "request_timeout_s"),
    )
    given = server.given()
    for key, option in pairs:
        if key in given:
            out[option] = given[key]
    # The token is the cluster's (read in Serve's build task, which runs with its environment).
    out["allowed_hosts"] = served_hosts(server.host or "127.0.0.1", resolve_token(None, TOKEN_ENV), server.allowed_hosts)
    return out
