"""Streaming over real HTTP (uvicorn on 127.0.0.1), local backend: the formats by Accept, errors
before and after the first item, a client that hangs up or stops reading, the first-item
deadline, and OpenAPI (tests/stream_checks.py; the Ray backend: tests/backends/test_streaming_ray.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import dagserve

from .. import stream_checks as sc
from .. import stream_graphs as sg
from ..background_server import BackgroundServer


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[dagserve.App, str]]:
    with dagserve.deploy(sg.chain, backend="local", request_timeout_s=2) as app, BackgroundServer(app.asgi()) as url:
        yield app, url


def test_formats(served: tuple[dagserve.App, str]) -> None:
    sc.check_http_formats(served[1])


def test_a_graph_that_does_not_stream_answers_json_whatever_the_client_accepts() -> None:
    with dagserve.deploy(sg.summed, backend="local") as app, BackgroundServer(app.asgi()) as url:
        for accept in ("text/event-stream", "application/x-ndjson", "*/*"):
            r = httpx.post(url, json={"n": 4}, headers={"accept": accept})
            assert r.headers["content-type"] == "application/json" and r.json() == 6


def test_errors(served: tuple[dagserve.App, str]) -> None:
    sc.check_http_error_mid_stream(served[1])


def test_a_node_failing_mid_stream_is_logged_once_with_its_traceback(
    served: tuple[dagserve.App, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="dagserve.http"):
        r = httpx.post(served[1], json={"n": 5, "fail_at": 2}, headers={"accept": "application/x-ndjson"}, timeout=60)
    assert r.status_code == 200 and "Traceback" not in r.text  # the error line carries no traceback
    (failed,) = [rec for rec in caplog.records if "failed with 500" in rec.getMessage()]
    assert failed.levelname == "ERROR" and failed.node == "produce"  # type: ignore[attr-defined]
    assert 'stream_graphs.py", line 22, in _step' in failed.traceback  # type: ignore[attr-defined]


def test_disconnect_stops_the_generator(served: tuple[dagserve.App, str], tmp_path: Any) -> None:
    app, url = served
    sc.check_http_disconnect(url, str(tmp_path / "steps.log"))
    assert app.in_flight == 0


def test_a_client_that_stops_reading_stops_the_generator(served: tuple[dagserve.App, str], tmp_path: Any) -> None:
    sc.check_http_slow_reader(served[1], str(tmp_path / "steps.log"))


def test_first_item_deadline(served: tuple[dagserve.App, str]) -> None:
    sc.check_http_first_item_deadline(served[1])


def test_openapi_describes_the_stream(served: tuple[dagserve.App, str]) -> None:
    doc = httpx.get(served[1] + "openapi.json").json()
    op = next(iter(doc["paths"].values()))["post"]
    content = op["responses"]["200"]["content"]
    assert {"text/event-stream", "application/x-ndjson", "application/json"} <= set(content)
    assert content["application/json"]["schema"]["type"] == "array"
