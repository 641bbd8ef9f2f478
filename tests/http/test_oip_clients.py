"""tritonclient.http and tritonclient.grpc against a real server (uvicorn and the gRPC server on
127.0.0.1), on both backends: the same values as ``app.call``, streaming item by item, and a
clear error for each kind of mistake. The clients run from .venv-clients (their protobuf clashes
with Ray's), through tests/clients/oip_check.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dagserve
from dagserve.http.grpc_server import GrpcServer
from tests import oip_graphs as og
from tests.background_server import BackgroundServer

ROOT = Path(__file__).resolve().parents[2]
CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
TOKEN = "oip-secret"

pytestmark = pytest.mark.http


def run_clients(url: str, grpc_port: int) -> dict[str, Any]:
    assert CLIENTS_PYTHON.exists(), "the protocol clients' environment is missing: scripts/setup.sh --test makes it"
    done = subprocess.run(
        [str(CLIENTS_PYTHON), str(ROOT / "tests" / "clients" / "oip_check.py"), url.removeprefix("http://").rstrip("/"),
         f"127.0.0.1:{grpc_port}", TOKEN],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def local_apps() -> Iterator[list[dagserve.App]]:
    apps = [dagserve.deploy(g, backend="local", request_timeout_s=30) for g in og.ALL]
    yield apps
    for app in apps:
        app.shutdown()


def serve_and_check(apps: list[dagserve.App]) -> dict[str, Any]:
    grpc = GrpcServer("127.0.0.1", 0)
    with BackgroundServer(dagserve.asgi_app(apps, token=TOKEN), companions=[grpc]) as url:
        return run_clients(url, grpc.port)


def expected(app: dagserve.App) -> dict[str, Any]:
    pixels = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = app.call({"pixels": pixels, "name": "ada", "scale": 2.0, "tags": ["a", "b"]})
    return {
        "sums": out["sums"].tolist(),
        "greeting": [out["greeting"]],
        "rows": [out["rows"]],
        "tags": [out["tags"]],
    }


def check_answers(got: dict[str, Any], want: dict[str, Any]) -> None:
    for proto in ("http", "grpc"):
        side = got[proto]
        assert side["live"] is True and side["ready"] is True
        assert side["inputs"] == [
            {"name": "pixels", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "name", "datatype": "BYTES", "shape": [1]},
            {"name": "scale", "datatype": "FP64", "shape": [1]},
            {"name": "tags", "datatype": "BYTES", "shape": [-1]},
        ]
        assert side["result"] == want, proto
        errors = side["errors"]
        bad_request, not_found, unauthenticated, internal = (
            ("400", "404", "401", "500") if proto == "http" else
            ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND", "StatusCode.UNAUTHENTICATED", "StatusCode.INTERNAL")
        )
        assert errors["datatype"] == f"{bad_request} Input 'pixels' has datatype FP64; it takes FP32."
        assert errors["shape"].startswith(f"{bad_request} Input 'pixels' has shape [2, 3]; it takes shape [-1, 4]")
        assert errors["unknown_tensor"].startswith(f"{bad_request} The model has no input 'colour'")
        assert errors["missing_tensor"].startswith(f"{bad_request} The request lacks input 'pixels'")
        assert errors["unknown_model"] == f"{not_found} There is no model 'nope'; the models are ['counting', 'failing', 'sleepy', 'tensors']."
        assert errors["token"].startswith(f"{unauthenticated} This route needs a bearer token")
        assert errors["node"].startswith(f"{internal} Node 'explode' raised ValueError: cannot count to 3")
    assert got["http"]["json_sums"] == want["sums"]
    assert got["grpc"]["errors"]["deadline"].startswith("StatusCode.DEADLINE_EXCEEDED")
    assert got["grpc"]["stream"] == [{"i": [i], "word": [f"w-{i}"]} for i in range(3)]


def test_tritonclient_http_and_grpc_on_the_local_backend(local_apps: list[dagserve.App]) -> None:
    check_answers(serve_and_check(local_apps), expected(local_apps[0]))


@pytest.mark.ray
def test_tritonclient_http_and_grpc_on_the_ray_backend(shared_ray: None) -> None:
    apps: list[dagserve.App] = []
    try:
        for g in og.ALL:
            apps.append(dagserve.deploy(g, backend="ray", request_timeout_s=30, ready_timeout_s=180))
        check_answers(serve_and_check(apps), expected(apps[0]))
    finally:
        for app in apps:
            app.shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
