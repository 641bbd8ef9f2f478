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

from ._app import App, deploy
from ._compiler import compile
from ._errors import (
    AppClosedError,
    CompileError,
    DagserveError,
    DeployError,
    GraphError,
    GraphvizNotFoundError,
    InputValidationError,
    NodeError,
    NodeNotFoundError,
    NoRouteError,
    OptionsError,
    OverloadedError,
    RenderError,
    RequestError,
    RequestTimeoutError,
)
from ._executor import RequestContext
from ._graph import Graph, Input, node, split, switch
from ._offline import MapResult
from ._options import Autoscaling, NodeOptions
from ._plan import DeploymentSpec, Edge, Plan, Step
from ._request_id import RequestIdFilter, current_request_id
from ._server import asgi_app, serve
from ._status import AppStatus, NodeStatus

__version__ = "0.1.0"

__all__ = [
    "App",
    "AppClosedError",
    "AppStatus",
    "Autoscaling",
    "CompileError",
    "DagserveError",
    "DeployError",
    "DeploymentSpec",
    "Edge",
    "Graph",
    "GraphError",
    "GraphvizNotFoundError",
    "Input",
    "InputValidationError",
    "MapResult",
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
    "asgi_app",
    "compile",
    "current_request_id",
    "deploy",
    "node",
    "serve",
    "split",
    "switch",
]
