"""A client that hangs up while its graph runs: the graph's work is cancelled, on the local
backend and on a real local Ray, and the request is counted as ``cancelled`` (issue 15).

Servers are real uvicorn on 127.0.0.1 (``BackgroundServer``); the client is a raw socket that
sends a whole request and closes before the answer. The probe node (from test_timeouts) counts
how its calls ended, where it runs (in this process, or in its Ray replica).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import dagserve
from dagserve.http.connections import SCOPE_HANGUP
from tests.background_server import BackgroundServer
from tests.http.test_timeouts import probe_graph, run_body, settled_stats, stats

pytestmark = pytest.mark.http

#: The probe sleeps this long unless cancelled (issue 15: a 2 s node ran to its end).
SLEEP_S = 2.0


def cancelled_count(client: httpx.Client, graph: str) -> float:
    """``dagserve_requests_total{graph=..., outcome="cancelled"}`` from the server's /metrics."""
    text = client.get("/metrics").text
    match = re.search(rf'^dagserve_requests_total\{{graph="{graph}",outcome="cancelled",protocol="http"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def hang_up_while_running(url: str, path: str, client: httpx.Client) -> dict[str, Any]:
    """Send a whole request for a probe call of SLEEP_S, close the socket once the probe runs,
    and return the stats from before."""
    before = stats(client, path)
    body = json.dumps(run_body(SLEEP_S)).encode()
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 20
        while stats(client, path)["probe"]["started"] == before["probe"]["started"]:
            assert time.monotonic() < deadline, "the probe never started"
            time.sleep(0.02)
    return before


def check_cancelled(url: str, path: str, graph: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        counted = cancelled_count(c, graph)
        before = hang_up_while_running(url, path, c)
        # Past the moment the probe would have finished and the sink run, had it not been cancelled.
        time.sleep(SLEEP_S + 0.5)
        after = settled_stats(c, path, expect_started=before["probe"]["started"] + 1)
        assert after["probe"]["started"] == before["probe"]["started"] + 1
        assert after["probe"]["cancelled"] == before["probe"]["cancelled"] + 1, after
        assert after["probe"]["finished"] == before["probe"]["finished"], after
        assert after["sink"] == before["sink"]
        assert cancelled_count(c, graph) == counted + 1
        # The server goes on serving, the probe too.
        assert c.post(path, json=run_body(0.0, x=5)).json() == 5


# -- local backend ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_server() -> Iterator[str]:
    app = dagserve.deploy(probe_graph("hangup"), backend="local")
    try:
        with BackgroundServer(dagserve.asgi_app(app)) as url:
            yield url
    finally:
        app.shutdown()


def test_a_client_that_hangs_up_cancels_its_graph(local_server: str) -> None:
    check_cancelled(local_server, "/hangup", "hangup")


def test_a_client_that_stays_gets_its_answer(local_server: str) -> None:
    """The watch for a hang-up does not cut requests whose client waits (nor count them)."""
    with httpx.Client(base_url=local_server, timeout=30) as c:
        counted = cancelled_count(c, "hangup")
        assert [c.post("/hangup", json=run_body(0.05, x=i)).json() for i in range(20)] == list(range(20))
        assert cancelled_count(c, "hangup") == counted


@contextlib.contextmanager
def plain_uvicorn(web: Any) -> Iterator[str]:
    """uvicorn with its own HTTP protocol, not dagserve's (which tells the ingress about lost
    connections): as when the ingress is mounted in the user's server."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(web, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, name="plain-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(20)


def test_dagserves_server_tells_the_ingress_of_each_lost_connection() -> None:
    """Under dagserve's server the ingress needs no task per request to watch for hang-ups."""

    async def show(request: Request) -> PlainTextResponse:
        return PlainTextResponse(type(request.scope.get(SCOPE_HANGUP)).__name__)

    with BackgroundServer(Starlette(routes=[Route("/", show)])) as url:
        assert [httpx.get(url).text for _ in range(2)] == ["HangUpWatch"] * 2


def test_under_another_server_a_client_that_hangs_up_cancels_its_graph() -> None:
    app = dagserve.deploy(probe_graph("hangup_plain"), backend="local")
    try:
        with plain_uvicorn(dagserve.asgi_app(app)) as url:
            check_cancelled(url, "/hangup_plain", "hangup_plain")
    finally:
        app.shutdown()


# -- Ray -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_server(shared_ray: None) -> Iterator[str]:
    with dagserve.deploy(probe_graph("ray_hangup"), backend="ray", ready_timeout_s=180) as app:
        with BackgroundServer(dagserve.asgi_app(app)) as url:
            yield url


@pytest.mark.ray
def test_on_ray_a_client_that_hangs_up_cancels_the_call_in_the_replica(ray_server: str) -> None:
    check_cancelled(ray_server, "/ray_hangup", "ray_hangup")
