"""A real browser (headless Chromium) against the OIP infer route: a page of another origin that
POSTs a body without a type (which needs no CORS preflight) is refused 403 before the graph runs,
while a page of the server's own origin is served. The headers are the browser's own."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

import dagserve
from tests import oip_graphs as og
from tests.background_server import BackgroundServer

pytestmark = pytest.mark.http
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

BODY = json.dumps({"inputs": [
    {"name": "pixels", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
    {"name": "name", "datatype": "BYTES", "shape": [1], "data": ["page"]},
]})


def page(target: str, mode: str) -> str:
    """A page that POSTs the infer body as a Blob without a type, and writes what came back."""
    return f"""<!doctype html><html><body><pre id="out">waiting</pre><script>
fetch({json.dumps(target)}, {{method: "POST", mode: {json.dumps(mode)}, body: new Blob([{json.dumps(BODY)}])}})
  .then(r => r.type === "opaque" ? "opaque" : r.status + " " + r.headers.get("content-type"))
  .then(t => {{ document.getElementById("out").textContent = "done " + t; }})
  .catch(e => {{ document.getElementById("out").textContent = "failed " + e; }});
</script></body></html>"""


class Statuses:
    """ASGI wrapper recording each /v2 answer's status and the request's Origin / Sec-Fetch-Site."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[int, str | None, str | None]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or "/v2/" not in scope["path"]:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])

        async def recording(message: Any) -> None:
            if message["type"] == "http.response.start":
                origin, site = headers.get(b"origin"), headers.get(b"sec-fetch-site")
                self.seen.append((message["status"], origin and origin.decode(), site and site.decode()))
            await send(message)

        await self.app(scope, receive, recording)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str, Statuses, list[int]]]:
    """(the graph's server, a server of another origin, the /v2 statuses, the graph's runs)."""
    runs: list[int] = []
    with dagserve.deploy(og.tensors, backend="local") as app:
        app.observers.append(lambda a, ctx, error, seconds: runs.append(1))
        holder: dict[str, str] = {}

        async def own_page(request: Request) -> HTMLResponse:
            return HTMLResponse(page(holder["own"] + "v2/models/tensors/infer", "same-origin"))

        web = Statuses(Starlette(routes=[Route("/page", own_page), Mount("/", app.asgi())]))
        with BackgroundServer(web) as own:
            holder["own"] = own

            async def foreign_page(request: Request) -> HTMLResponse:
                return HTMLResponse(page(own + "v2/models/tensors/infer", "no-cors"))

            with BackgroundServer(Starlette(routes=[Route("/page", foreign_page)])) as foreign:
                yield own, foreign, web, runs


def browse(url: str) -> str:
    assert CHROMIUM is not None, "chromium is installed by scripts/setup.sh --test"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    return done.stdout


def test_a_page_of_another_origin_is_refused_and_the_graph_never_runs(servers: tuple[str, str, Statuses, list[int]]) -> None:
    own, foreign, web, runs = servers
    before = len(web.seen)
    dom = browse(foreign + "page")
    assert "done opaque" in dom  # the page learns nothing
    status, origin, site = web.seen[before]
    assert status == 403 and origin == foreign.rstrip("/") and site in ("same-site", "cross-site")
    assert runs == []


def test_a_page_of_the_servers_own_origin_is_served(servers: tuple[str, str, Statuses, list[int]]) -> None:
    own, _, web, runs = servers
    before = len(web.seen)
    dom = browse(own + "page")
    assert "done 200 application/json" in dom
    status, origin, site = web.seen[before]
    assert status == 200 and origin == own.rstrip("/") and site == "same-origin"
    assert runs == [1]
