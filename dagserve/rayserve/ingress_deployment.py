"""The HTTP ingress as a Serve deployment (``RayBackend(ingress_replicas=N)``).

Each ingress replica runs the same Starlette ingress as ``dagserve run`` (``dagserve.http.ingress``)
around an App attached to the graph's node deployments, behind Serve's HTTP proxy on
127.0.0.1. Use it when one ingress process is not enough, or to serve from every node of a
cluster; in one process the in-process ingress is faster (docs/ray.md).

This module imports ray.serve at import: it is only imported when ``ingress_replicas`` is set.
Where the deployment goes in the graph's application: ``dagserve.backends.ray.proxy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray import serve

from dagserve.app import App
from dagserve.backends.ray.backend import RayBackend
from dagserve.http.server import asgi_app
from dagserve.http.settings import ADMIN_TOKEN_ENV, TOKEN_ENV, resolve_token
from dagserve.runtime.heap import settle_heap

if TYPE_CHECKING:
    from dagserve.compiler.plan import Plan

__all__ = ["IngressReplica", "driver_options"]


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
        # The deploying backend's direct-transport limits: the node replicas hold to the same.
        backend = RayBackend.attached(plan, versions, **(direct_options or {}))
        graph = _GraphInfo(plan.graph_name, plan.description)
        self._app = App(graph, plan, backend, request_timeout_s=request_timeout_s)  # type: ignore[arg-type]
        self._options = ingress_options
        settle_heap()  # the replica has started: no GC scans of what it holds for good

    def __serve_build_asgi_app__(self) -> Any:
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


def driver_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ingress options with the tokens resolved here, in the process that deploys.

    ``asgi_app`` falls back to ``$DAGSERVE_TOKEN`` / ``$DAGSERVE_ADMIN_TOKEN`` for a token not
    given; in a replica that would read the Ray worker's environment (set when Ray started, maybe
    by someone else), not the deployer's. An empty string means "no token" without that fallback.
    """
    out = dict(options)
    for key, env in (("token", TOKEN_ENV), ("admin_token", ADMIN_TOKEN_ENV)):
        out[key] = resolve_token(out.get(key), env) or ""
    return out
