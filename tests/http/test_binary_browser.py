"""A real browser (headless Chromium) uploading files to a served graph: from the server's own page
the upload runs; from a page of another origin (another port: same-site; another host name:
cross-site) the browser sends it without asking, and the server refuses it with 403 unread."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

import dagserve
from tests import binary_graphs as bg
from tests.background_server import BackgroundServer

pytestmark = pytest.mark.http

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# A page that uploads a file with FormData, as a web app would; `mode` no-cors for another origin
# (the answer is opaque to the page: only the server knows what happened).
PAGE = """<!doctype html><title>upload</title><body><script>
const form = new FormData();
form.append("image", new Blob(["\\x89PNG fake"], {type: "image/png"}), "cat.png");
form.append("note", "%(note)s");
fetch("%(target)s", {method: "POST", body: form, mode: "%(mode)s"})
  .then(r => { document.body.dataset.status = r.status; })
  .catch(e => { document.body.dataset.status = "error " + e; });
</script></body>"""


class Recorder:
    """ASGI middleware noting each POST's Origin, Sec-Fetch-Site and answer status."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        entry = {"origin": headers.get("origin"), "site": headers.get("sec-fetch-site"), "status": None}
        self.seen.append(entry)

        async def noting(message: Any) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, receive, noting)


def page(note: str, target: str, mode: str) -> HTMLResponse:
    return HTMLResponse(PAGE % {"note": note, "target": target, "mode": mode})


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str, Recorder, list[str]]]:
    """(the graph server's URL, another origin's URL, the recorder, the notes the graph received)."""
    notes: list[str] = []
    app = dagserve.deploy(bg.upload(), backend="local")
    app.observers.append(lambda a, ctx, error, seconds: notes.append("ran"))
    own = Starlette(routes=[Route("/own.html", lambda r: page("own", "/ml/upload", "cors")), Mount("/ml", app.asgi())])
    recorder = Recorder(own)
    try:
        with BackgroundServer(recorder) as graph_url:
            target = graph_url.rstrip("/") + "/ml/upload"
            other = Starlette(
                routes=[
                    Route("/other.html", lambda r: page("other", target, "no-cors")),
                ]
            )
            with BackgroundServer(other) as other_url:
                yield graph_url.rstrip("/"), other_url.rstrip("/"), recorder, notes
    finally:
        app.shutdown()


def browse(url: str) -> str:
    """Load ``url`` in headless Chromium until its scripts settle; the DOM it ends with."""
    assert CHROMIUM is not None, "this test drives a real browser: install chromium (scripts/setup.sh --test does)"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--virtual-time-budget=10000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_browser_upload_runs_from_the_servers_own_page_only(servers: tuple[str, str, Recorder, list[str]]) -> None:
    graph_url, other_url, recorder, runs = servers
    port = graph_url.rsplit(":", 1)[1]
    other_port = other_url.rsplit(":", 1)[1]

    assert 'data-status="200"' in browse(f"{graph_url}/own.html")
    assert recorder.seen[-1] == {"origin": graph_url, "site": "same-origin", "status": 200}
    assert runs == ["ran"]

    # Another port of the same host: same-site, another origin.
    browse(f"{other_url}/other.html")
    assert recorder.seen[-1] == {"origin": other_url, "site": "same-site", "status": 403}
    # Another host name for this machine: cross-site.
    browse(f"http://localhost:{other_port}/other.html")
    assert recorder.seen[-1] == {"origin": f"http://localhost:{other_port}", "site": "cross-site", "status": 403}
    assert runs == ["ran"]  # the refused uploads never reached the graph
    assert port != other_port
