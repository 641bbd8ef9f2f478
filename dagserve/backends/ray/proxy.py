"""Serve's HTTP proxy, for the Ray backend's ``ingress_replicas=N`` (the HTTP ingress on Serve).

The ingress replica's class belongs to the HTTP layer (``dagserve.rayserve.ingress_deployment``) and reaches
the backend through ``dagserve._hooks``.
"""

from __future__ import annotations

import math
import socket
from typing import Any

from dagserve._errors import DeployError
from dagserve.backends.ray import cluster as ray_cluster

__all__ = ["INGRESS_DEPLOYMENT", "check_proxy", "free_port", "ingress_spread", "ingress_url"]

#: The ingress deployment's name in the graph's Serve application.
INGRESS_DEPLOYMENT = "dagserve-ingress"


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


def ingress_spread(replicas: int) -> dict[str, Any]:
    """Serve options that spread ``replicas`` ingress replicas over the cluster's nodes.

    At most ceil(replicas / nodes alive now) per node, so two replicas on a two-node cluster run
    on both nodes (Serve's own spreading is best effort), each behind its node's proxy. A replica
    whose node is lost waits for a node with room (the others serve meanwhile); on one node,
    nothing changes.
    """
    import ray

    if not ray.is_initialized():
        return {}  # building an application without Ray (its nodes are counted where it deploys)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes <= 1:
        return {}
    return {"max_replicas_per_node": math.ceil(replicas / nodes)}
