"""Composition over HTTP, in process (httpx.ASGITransport): the statuses nodes choose
(``dagserve.HTTPError``, Starlette's and FastAPI's ``HTTPException``) in the usual error shape, and
the ``x-dagserve-skipped`` header of an ``optional`` that skipped its node."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import HTTPException as FastAPIHTTPException
from starlette.exceptions import HTTPException

import dagserve


@dagserve.node
def lookup(x: int) -> int:
    if x < 0:
        raise dagserve.HTTPError(404, f"No item {x}.")
    if x == 0:
        raise HTTPException(401, "Who are you?", headers={"www-authenticate": "Bearer"})
    if x == 1:
        raise FastAPIHTTPException(422, detail=[{"loc": ["x"], "msg": "odd"}])
    return x


@dagserve.node
def flaky(x: int) -> int:
    if x > 10:
        raise ValueError("too big")
    return x


def graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = {"found": lookup(inp["x"]), "extra": dagserve.optional(flaky(inp["x"]), default=None)}
    return dagserve.Graph(out, name="composed")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    with dagserve.deploy(graph(), backend="local") as app:
        transport = httpx.ASGITransport(app=dagserve.asgi_app(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_node_chosen_statuses_answer_in_the_error_shape_naming_the_node(client: httpx.AsyncClient) -> None:
    r = await client.post("/", json={"x": -3})
    assert r.status_code == 404
    error = r.json()["error"]
    assert error == {
        "type": "HTTPError",
        "message": "No item -3.",
        "status": 404,
        "node": "lookup",
        "request_id": r.headers["x-request-id"],
    }
    r = await client.post("/", json={"x": 0})
    assert (r.status_code, r.json()["error"]["type"], r.json()["error"]["node"]) == (401, "HTTPException", "lookup")
    assert r.headers["www-authenticate"] == "Bearer"
    r = await client.post("/", json={"x": 1})
    assert r.status_code == 422
    assert r.json()["error"]["detail"] == [{"loc": ["x"], "msg": "odd"}]
    assert "Traceback" not in r.text


async def test_skipped_nodes_are_named_in_a_header(client: httpx.AsyncClient) -> None:
    r = await client.post("/", json={"x": 12})
    assert r.status_code == 200 and r.json() == {"found": 12, "extra": None}
    assert r.headers["x-dagserve-skipped"] == "flaky"
    r = await client.post("/", json={"x": 5}, headers={"x-dagserve-trace": "1"})
    assert r.json() == {"found": 5, "extra": 5}
    assert "x-dagserve-skipped" not in r.headers and "server-timing" in r.headers


@pytest.mark.http
def test_a_client_hanging_up_still_ends_a_request_whose_node_is_optional() -> None:
    """An ``optional`` absorbs its node's failures, not the cancellation of the request: the probe
    is cancelled, nothing after it runs, and the request counts as ``cancelled`` (real uvicorn)."""
    from tests.background_server import BackgroundServer
    from tests.http.test_ingress_disconnect import check_cancelled
    from tests.http.test_timeouts import Probe, Sink, run_body

    probe, sink = Probe(), Sink()
    with dagserve.Input() as inp:
        x = inp["x"]
        out = dagserve.switch(
            inp["case"],
            {
                "run": sink(dagserve.optional(probe(x, inp["seconds"]), default=-1)),
                "stats": {"probe": probe.stats(x), "sink": sink.stats(x)},
            },
        )
        graph = dagserve.Graph(out, name="optional_hangup")
    with dagserve.deploy(graph, backend="local") as app, BackgroundServer(dagserve.asgi_app(app)) as url:
        check_cancelled(url, "/optional_hangup", "optional_hangup")
        assert httpx.post(url + "optional_hangup", json=run_body(0.0, x=3), timeout=30).json() == 3
