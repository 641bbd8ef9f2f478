"""The public surface: a locked __all__, a fast import that never pulls in ray."""

from __future__ import annotations

import subprocess
import sys

import dagserve

EXPECTED = [
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


def test_all_is_locked_and_sorted() -> None:
    assert dagserve.__all__ == sorted(dagserve.__all__)
    assert dagserve.__all__ == EXPECTED
    for name in dagserve.__all__:
        assert getattr(dagserve, name) is not None


def test_every_error_derives_from_the_root() -> None:
    errors = [getattr(dagserve, n) for n in dagserve.__all__ if n.endswith("Error")]
    assert errors and all(issubclass(e, dagserve.DagserveError) for e in errors)


def test_import_is_light() -> None:
    # How fast the import is belongs to `make bench` (its build workload); here only what it pulls in.
    code = (
        "import sys, dagserve; "
        "print([m for m in ('ray', 'starlette', 'uvicorn', 'graphviz', 'networkx', 'prometheus_client', 'rich', 'numpy', "
        "'grpc', 'google.protobuf') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
