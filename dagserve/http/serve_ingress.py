"""The HTTP ingress as a Serve deployment (``RayBackend(ingress_replicas=N)``).

Each ingress replica runs the same Starlette ingress as ``dagserve run`` (``dagserve.http.ingress``)
around an App attached to the graph's node deployments, behind Serve's HTTP proxy on
127.0.0.1. Use it when one ingress process is not enough, or to serve from every node of a
cluster; in one process the in-process ingress is faster (docs/ray.md).

This module imports ray.serve at import: it is only imported when ``ingress_replicas`` is set.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ray import serve

from dagserve._errors import DeployError
from dagserve.backends.ray import cluster as ray_cluster

if TYPE_CHECKING:
    from dagserve.compiler.plan import Plan
    from dagserve.backends.ray.backend import RayBackend

__all__ = ["INGRESS_DEPLOYMENT", "IngressReplica", "bind_ingress", "free_port", "ingress_url"]

#: The ingress deployment's name in the graph's Serve application.
INGRESS_DEPLOYMENT = "dagserve-ingress"


@dataclass(frozen=True)
class _GraphInfo:
    """What the ingress reads of a graph (its name and description), without the graph objects."""

    name: str
    description: str | None


@serve.ingress()
class IngressReplica:
    """One ingress replica: an App on the graph's deployments, served by dagserve's ingress."""

    def __init__(
        self,
        plan: Plan,
        versions: dict[str, int],
        ingress_options: dict[str, Any],
        request_timeout_s: float | None,
        direct_options: dict[str, Any] | None = None,
        **_children: Any,
    ) -> None:
        from dagserve.app import App
        from dagserve.backends.ray.backend import RayBackend

        # The deploying backend's direct-transport limits: the node replicas hold to the same.
        backend = RayBackend.attached(plan, versions, **(direct_options or {}))
        graph = _GraphInfo(plan.graph_name, plan.description)
        self._app = App(graph, plan, backend, request_timeout_s=request_timeout_s)  # type: ignore[arg-type]
        self._options = ingress_options

    def __serve_build_asgi_app__(self) -> Any:
        from dagserve.http.server import asgi_app

        return _WithoutRequestIdHeader(asgi_app(self._app, **self._options))


class _WithoutRequestIdHeader:
    """Serve's proxy forwards the request id in ``x-request-id`` (the ingress takes it from there)
    and sets that header on the response itself: drop the ingress's copy so it is not doubled."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_once(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_once)


def bind_ingress(backend: RayBackend, nodes: list[Any]) -> Any:
    """The ingress deployment, bound with every node deployment (so Serve deploys them together)."""
    plan = backend._plan
    assert plan is not None  # deploy() set it; not user input
    if INGRESS_DEPLOYMENT in backend._specs:
        raise DeployError(
            f"A node is named {INGRESS_DEPLOYMENT!r}, the name of the ingress deployment; rename the node."
        )
    # Graph objects stay behind: the replicas need only the plan's specs.
    stripped = replace(plan, deployments=tuple(replace(d, source=None) for d in backend._specs.values()))
    d = serve.deployment(
        IngressReplica,
        name=INGRESS_DEPLOYMENT,
        num_replicas=backend.ingress_replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=backend.ingress_max_ongoing_requests,
    )
    d = d.options(version=f"{backend._token}-ingress-{backend._ingress_version}", _internal=True)
    return d.bind(
        stripped,
        dict(backend._versions),
        driver_options(backend.ingress_options),
        backend.ingress_request_timeout_s,
        backend.direct_options(),
        _children=nodes,
    )


def driver_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ingress options with the tokens resolved here, in the process that deploys.

    ``asgi_app`` falls back to ``$DAGSERVE_TOKEN`` / ``$DAGSERVE_ADMIN_TOKEN`` for a token not
    given; in a replica that would read the Ray worker's environment (set when Ray started, maybe
    by someone else), not the deployer's. An empty string means "no token" without that fallback.
    """
    from dagserve.http.server import ADMIN_TOKEN_ENV, TOKEN_ENV, resolve_token

    out = dict(options)
    for key, env in (("token", TOKEN_ENV), ("admin_token", ADMIN_TOKEN_ENV)):
        out[key] = resolve_token(out.get(key), env) or ""
    return out


def check_proxy() -> tuple[str, int]:
    """Serve's HTTP proxy address, or a :class:`DeployError` saying how to get one."""
    address = ray_cluster.proxy_address()
    if address is None:
        raise DeployError(
            "ingress_replicas needs Serve's HTTP proxy, but Serve already runs on this Ray without one "
            "(dagserve starts it without a proxy when the ingress runs in-process). Deploy the "
            "ingress_replicas graph first, or start Serve with its proxy: "
            "serve.start(http_options={'host': '127.0.0.1', 'port': PORT})."
        )
    return address


def ingress_url(app_name: str) -> str:
    """Where the graph's ingress deployment answers, through Serve's proxy."""
    host, port = check_proxy()
    return f"http://{host}:{port}/{app_name}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for Serve's proxy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
