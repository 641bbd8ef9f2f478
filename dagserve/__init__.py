"""dagserve: compose model nodes and business-logic nodes into an inference graph with plain
Python, then serve it with every node its own independently scalable Ray Serve deployment.

::

    import dagserve

    @dagserve.node
    def clean(text: str) -> str:
        return text.strip().lower()

    @dagserve.node(max_batch_size=16)
    class Sentiment:
        def __init__(self) -> None:
            self.positive = {"good", "great"}          # load weights once per replica

        async def __call__(self, texts: list[str]) -> list[float]:
            return [float(any(w in t for w in self.positive)) for t in texts]

    with dagserve.Input() as inp:
        graph = dagserve.Graph({"score": Sentiment()(clean(inp["text"]))}, name="sentiment")

    with dagserve.deploy(graph, backend="local") as app:
        app.call({"text": "Great film"})               # {'score': 1.0}

``import dagserve`` never imports ray; the Ray backend loads it when used.
"""

from __future__ import annotations

from typing import Any

from dagserve._errors import (
    AppClosedError,
    CompileError,
    DagserveError,
    DeployError,
    GraphError,
    GraphvizNotFoundError,
    HTTPError,
    InputValidationError,
    JobAttemptsExhaustedError,
    JobCancelledError,
    JobNotFoundError,
    JobStoreError,
    ModelIdError,
    NodeError,
    NodeNotFoundError,
    NoRouteError,
    OptionsError,
    OverloadedError,
    RenderError,
    RequestError,
    RequestTimeoutError,
    TensorError,
)
from dagserve._options import Autoscaling, NodeOptions
from dagserve._version import __version__ as __version__
from dagserve.app import App, AppGroup, deploy
from dagserve.compiler.passes import compile
from dagserve.compiler.plan import DeploymentSpec, Edge, Plan, Step
from dagserve.graph import File, Graph, Input, map, node, optional, split, switch
from dagserve.graph.tensors import TensorSpec
from dagserve import openai
from dagserve.http.server import asgi_app, serve
from dagserve.jobs import Job, JobSettings
from dagserve.runtime.executor import RequestContext
from dagserve.runtime.handles import Handle, HandleError
from dagserve.runtime.mapping import MapResult
from dagserve.runtime.multiplex import model_id, multiplexed
from dagserve.runtime.request_id import RequestIdFilter, current_request_id
from dagserve.runtime.status import AppStatus, NodeStatus


# -- wiring: the few calls that point up the layers (dagserve/_hooks.py says why) -------------------
def _serve_ingress(options: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    from dagserve.rayserve.ingress_deployment import IngressReplica, driver_options  # imports ray: only with ingress_replicas

    return IngressReplica, driver_options(options)


def _replica_spans(endpoint: str, replica: str) -> Any:
    from dagserve.observe.otel import replica_spans  # imports the OpenTelemetry SDK: only when tracing

    return replica_spans(endpoint, replica)


def _wire() -> None:
    from dagserve import render as _render
    from dagserve._hooks import hooks
    from dagserve.http.jsonio import dump_json

    hooks.to_dot, hooks.render, hooks.to_svg = _render.to_dot, _render.render, _render.to_svg
    hooks.asgi_app = asgi_app
    hooks.serve_ingress = _serve_ingress
    hooks.replica_spans = _replica_spans
    hooks.dump_json = dump_json


_wire()

__all__ = [
    "App",
    "AppClosedError",
    "AppGroup",
    "AppStatus",
    "Autoscaling",
    "CompileError",
    "DagserveError",
    "DeployError",
    "DeploymentSpec",
    "Edge",
    "File",
    "Graph",
    "GraphError",
    "GraphvizNotFoundError",
    "HTTPError",
    "Handle",
    "HandleError",
    "Input",
    "InputValidationError",
    "Job",
    "JobAttemptsExhaustedError",
    "JobCancelledError",
    "JobNotFoundError",
    "JobSettings",
    "JobStoreError",
    "MapResult",
    "ModelIdError",
    "NoRouteError",
    "NodeError",
    "NodeNotFoundError",
    "NodeOptions",
    "NodeStatus",
    "OptionsError",
    "OverloadedError",
    "Plan",
    "RenderError",
    "RequestContext",
    "RequestError",
    "RequestIdFilter",
    "RequestTimeoutError",
    "Step",
    "TensorError",
    "TensorSpec",
    "asgi_app",
    "compile",
    "current_request_id",
    "deploy",
    "map",
    "model_id",
    "multiplexed",
    "node",
    "openai",
    "optional",
    "serve",
    "split",
    "switch",
]
