"""The files ``dagserve build`` writes: a Ray Serve config file, or a KubeRay ``RayService``.

A Serve config file (``serve deploy serve.yaml``) has one application per graph, built on the
cluster by :func:`dagserve.rayserve.application.build` from ``import_path`` and ``args``, and lists every
node as its own deployment with its options (replicas or autoscaling, CPU/GPU share, queue
bounds, health checks), plus dagserve's ingress deployment. Serve's config overrides the code
for those: edit one node's ``num_replicas`` and ``serve deploy`` again, and Serve changes that
deployment only. Options Serve does not know (batching, retries, timeouts) travel in ``args``
(``config:``); changing ``args`` rebuilds the application. The application's ``runtime_env``
carries dagserve's tuned Serve settings (``dagserve.backends.ray.cluster.serve_env``).

The ``RayService`` manifest holds the same applications in ``serveConfigV2``, and a Ray cluster
with Ray's token authentication on, whose containers take dagserve's tokens from a Secret.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from dagserve._version import __version__
from dagserve.backends.ray.cluster import serve_env
from dagserve.backends.ray.proxy import INGRESS_DEPLOYMENT
from dagserve.backends.ray.serve_options import deployment_options
from dagserve.deploy_config import DeployConfig, compile_with_config, format_size
from dagserve.graph import Graph
from dagserve.http.settings import ADMIN_TOKEN_ENV, TOKEN_ENV, server_config
from dagserve.rayserve.application import IMPORT_PATH

__all__ = ["RAY_IMAGE", "RAY_VERSION", "dump_yaml", "kubernetes_name", "rayservice_manifest", "serve_config"]

#: The Ray that dagserve is pinned to, and the image KubeRay runs by default (use one with your code).
RAY_VERSION = "2.60.0"
RAY_IMAGE = f"rayproject/ray:{RAY_VERSION}"


def serve_config(
    target: str,
    graphs: Sequence[Graph],
    config: DeployConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ingress_replicas: int = 1,
    working_dir: str | None = None,
) -> dict[str, Any]:
    """A Ray Serve config file (as a dict) serving ``graphs`` through Serve's HTTP proxy on ``host:port``."""
    config = config or DeployConfig()
    server = {k: v for k, v in server_config(config).given().items() if k != "port"}
    server["host"] = host  # the proxy's address: the ingress answers loopback Host names only there
    apps = [
        _application(target, g, config, server, single=len(graphs) == 1, replicas=ingress_replicas, working_dir=working_dir)
        for g in graphs
    ]
    return {"proxy_location": "HeadOnly", "http_options": {"host": host, "port": port}, "applications": apps}


def _application(
    target: str,
    graph: Graph,
    config: DeployConfig,
    server: dict[str, Any],
    *,
    single: bool,
    replicas: int,
    working_dir: str | None,
) -> dict[str, Any]:
    plan = compile_with_config(graph, config.for_graph(graph.name))
    deployments: list[dict[str, Any]] = []
    for spec in plan.remote_deployments:
        options = deployment_options(spec)
        deployments.append({"name": options.pop("name"), **options})
    deployments.append({"name": INGRESS_DEPLOYMENT, "num_replicas": replicas})
    args: dict[str, Any] = {"target": target, "graph": graph.name}
    section = config.for_graph(graph.name).graphs.get(graph.name)
    file_config: dict[str, Any] = {"server": _plain(server)}
    if section is not None and section.nodes:
        file_config["graphs"] = {graph.name: {"nodes": {k: dict(v) for k, v in section.nodes.items()}}}
    args["config"] = file_config
    runtime_env: dict[str, Any] = {"env_vars": serve_env()}
    if working_dir:
        runtime_env["working_dir"] = working_dir
    return {
        "name": graph.name,
        "route_prefix": "/" if single else f"/{graph.name}",
        "import_path": IMPORT_PATH,
        "args": args,
        "runtime_env": runtime_env,
        "logging_config": {"enable_access_log": False},
        "deployments": deployments,
    }


def _plain(server: dict[str, Any]) -> dict[str, Any]:
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in server.items()}
    if isinstance(out.get("max_body_size"), int):
        out["max_body_size"] = format_size(out["max_body_size"])
    return out


def rayservice_manifest(serve: dict[str, Any], *, name: str, image: str = RAY_IMAGE, secret: str | None = None) -> dict[str, Any]:
    """A KubeRay ``RayService`` (ray.io/v1) running the applications of the Serve config ``serve``.

    Ray's token authentication is on (``authOptions: {mode: token}``); dagserve's tokens come from
    the Secret ``secret`` (default ``<name>-dagserve``, keys ``token`` and ``admin-token``, each
    optional: without ``admin-token`` there are no admin routes). KubeRay runs Serve's proxy on
    every node on port 8000 behind the ``<name>-serve-svc`` Service.
    """
    secret = secret or f"{name}-dagserve"
    env = [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for var, key in ((TOKEN_ENV, "token"), (ADMIN_TOKEN_ENV, "admin-token"))
    ]
    # KubeRay's proxy listens on every pod address: the ingress must answer the Service's names.
    apps = [_for_kubernetes(app) for app in serve["applications"]]
    serve_v2 = dump_yaml({"applications": apps})
    ports = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": 8000, "name": "serve"},
    ]
    head = {"name": "ray-head", "image": image, "env": env, "ports": ports, "resources": _resources("2", "4Gi")}
    worker = {"name": "ray-worker", "image": image, "env": env, "resources": _resources("2", "4Gi")}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": f"dagserve-{__version__}"}},
        "spec": {
            "serveConfigV2": serve_v2,
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "authOptions": {"mode": "token"},
                "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [head]}}},
                "workerGroupSpecs": [
                    {
                        "groupName": "workers",
                        "replicas": 1,
                        "minReplicas": 1,
                        "maxReplicas": 4,
                        "rayStartParams": {},
                        "template": {"spec": {"containers": [worker]}},
                    }
                ],
            },
        },
    }


def dump_yaml(document: Any) -> str:
    """``document`` as YAML a person edits by hand: no anchors or aliases (a value used twice is
    written twice) and every multi-line string as a literal block (``serveConfigV2: |``)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return str(yaml.dump(document, Dumper=Dumper, sort_keys=False, width=120))


def kubernetes_name(text: str) -> str:
    """A Kubernetes object name (lower case, digits and '-') from a graph's name."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:63] or "dagserve"


def _for_kubernetes(app: dict[str, Any]) -> dict[str, Any]:
    args = dict(app["args"])
    config = dict(args.get("config") or {})
    server = dict(config.get("server") or {})
    server["host"] = "0.0.0.0"  # noqa: S104 - KubeRay's proxy binds every pod address; the Service decides who reaches it
    config["server"] = server
    args["config"] = config
    return {**app, "args": args}


def _resources(cpu: str, memory: str) -> dict[str, Any]:
    return {"limits": {"cpu": cpu, "memory": memory}, "requests": {"cpu": cpu, "memory": memory}}
