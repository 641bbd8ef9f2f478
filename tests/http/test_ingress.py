"""The HTTP ingress in process (httpx.ASGITransport): routes, the error contract, limits, auth,
request ids, hooks. End-to-end tests through uvicorn are in test_ingress_http.py."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import dagserve
from dagserve.http.ingress import Ingress
from tests import ingress_graphs as g

Make = Callable[..., Awaitable[httpx.AsyncClient]]
HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """``await make(graph_or_graphs, deploy={...}, **ingress_options)`` -> a client of a fresh ingress."""
    apps: list[dagserve.App] = []
    clients: list[httpx.AsyncClient] = []

    async def build(graphs: Any, *, deploy: dict[str, Any] | None = None, **options: Any) -> httpx.AsyncClient:
        graphs = graphs if isinstance(graphs, list) else [graphs]
        deployed = [dagserve.deploy(gr, backend="local", **(deploy or {})) for gr in graphs]
        apps.extend(deployed)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=dagserve.asgi_app(deployed, **options)), base_url="http://test"
        )
        clients.append(client)
        return client

    yield build
    for c in clients:
        await c.aclose()
    for a in apps:
        a.shutdown()


def assert_error(r: httpx.Response, status: int, error_type: str, *, node: str | None = None) -> dict[str, Any]:
    """The documented error shape, with the request id of the response header."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) >= {"type", "message", "status", "node", "request_id"}
    assert error["type"] == error_type
    assert error["status"] == status
    assert error["node"] == node
    assert error["request_id"] == r.headers["x-request-id"]
    assert "traceback" not in error
    assert "Traceback" not in r.text
    return error


# -- success and routes ---------------------------------------------------------------------------------


async def test_one_graph_answers_at_root_and_by_name(make: Make) -> None:
    c = await make(g.typed())
    r = await c.post("/", json={"x": 3})
    assert r.status_code == 200
    assert r.json() == {"y": 6, "tag": "a"}
    assert HEX32.fullmatch(r.headers["x-request-id"])
    assert (await c.post("/typed", json={"x": 4, "tag": "b"})).json() == {"y": 8, "tag": "b"}


async def test_several_graphs_answer_by_name_and_root_lists_them(make: Make) -> None:
    c = await make([g.typed(), g.echoing()])
    assert (await c.post("/typed", json={"x": 1})).json() == {"y": 2, "tag": "a"}
    assert (await c.post("/echo", json=[1, "two", None])).json() == [1, "two", None]
    listing = await c.get("/")
    assert listing.json() == {
        "graphs": [
            {"name": "typed", "path": "/typed", "description": "Doubles x."},
            {"name": "echo", "path": "/echo", "description": None},
        ]
    }
    r = await c.post("/", json={})
    assert_error(r, 405, "MethodNotAllowed")
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}


async def test_unknown_route_is_404_and_wrong_method_405_with_allow(make: Make) -> None:
    c = await make(g.typed())
    error = assert_error(await c.get("/nope"), 404, "NotFound")
    assert "'/nope'" in error["message"]
    r = await c.get("/typed")
    error = assert_error(r, 405, "MethodNotAllowed")
    assert r.headers["allow"] == "POST"
    assert "does not accept GET; use POST" in error["message"]
    assert_error(await c.put("/-/healthz"), 405, "MethodNotAllowed")


async def test_health_and_readiness(make: Make) -> None:
    c = await make([g.typed(), g.echoing()])
    assert (await c.get("/-/healthz")).json() == {"status": "ok"}
    assert (await c.get("/-/ready")).json() == {"ready": True, "graphs": {"typed": True, "echo": True}, "pending": {}}


async def test_ready_is_503_when_a_graph_is_down_or_the_server_drains() -> None:
    apps = [dagserve.deploy(g.typed(), backend="local"), dagserve.deploy(g.echoing(), backend="local")]
    web = dagserve.asgi_app(apps)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://test") as c:
        apps[1].shutdown()
        r = await c.get("/-/ready")
        error = assert_error(r, 503, "NotReady")
        assert error["graphs"] == {"typed": True, "echo": False}
        assert "echo" in error["message"]
        assert r.headers["retry-after"] == "5"
        web.state.dagserve.draining = True
        assert "shutting down" in assert_error(await c.get("/-/ready"), 503, "NotReady")["message"]
        # a closed App answers its graph route with 503, not a crash
        r = await c.post("/echo", json=1)
        assert_error(r, 503, "AppClosedError")
        assert r.headers["retry-after"] == "5"
    apps[0].shutdown()


# -- the error contract -----------------------------------------------------------------------------------


async def test_payload_failing_the_schema_is_422_listing_each_field_before_any_node_runs(make: Make) -> None:
    c = await make(g.typed())
    before = g.RAN["double"]
    r = await c.post("/", json={"x": "not a number", "tag": ["no"]})
    error = assert_error(r, 422, "InputValidationError")
    assert sorted(error["errors"], key=lambda e: e["loc"]) == [
        {"loc": ["tag"], "msg": "Input should be a valid string", "type": "string_type"},
        {
            "loc": ["x"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "type": "int_parsing",
        },
    ]
    missing = assert_error(await c.post("/", json={}), 422, "InputValidationError")
    assert missing["errors"] == [{"loc": ["x"], "msg": "Field required", "type": "missing"}]
    assert g.RAN["double"] == before


class Letter(BaseModel):
    body: str
    to: str


async def test_a_payload_that_is_not_an_object_is_named_as_the_payload_not_a_field(make: Make) -> None:
    """Issue 15: an empty location was written "body", which reads as the schema's field "body"."""
    with dagserve.Input(schema=Letter) as inp:
        graph = dagserve.Graph(g.echo(inp["body"]), name="letters")
    c = await make(graph)
    error = assert_error(await c.post("/", json=["not", "an", "object"]), 422, "InputValidationError")
    assert error["message"] == "The payload does not match Letter: 1 error(s) at the payload itself."
    assert error["errors"][0]["loc"] == []
    error = assert_error(await c.post("/", json={"to": "x"}), 422, "InputValidationError")
    assert error["message"] == "The payload does not match Letter: 1 error(s) at body."


class Order(BaseModel):
    item: str
    lang: str = "en"


class LooseOrder(Order):
    model_config = ConfigDict(extra="ignore")


class OpenOrder(Order):
    model_config = ConfigDict(extra="allow")


async def test_unknown_fields_are_refused_by_name_unless_the_schema_says_otherwise(make: Make) -> None:
    """Issue 30: {"langg": "fr"} ran as English. A schema that says nothing refuses it (422 naming
    the field, no node runs); one that sets extra itself keeps pydantic's rule; no schema, no check."""
    graphs = []
    for schema, name in ((Order, "strict"), (LooseOrder, "loose"), (OpenOrder, "open")):
        with dagserve.Input(schema=schema) as inp:
            graphs.append(dagserve.Graph(g.echo(inp["lang"]), name=name))
    with dagserve.Input() as inp:
        graphs.append(dagserve.Graph(g.echo(inp["lang"]), name="plain"))
    c = await make(graphs)
    error = assert_error(await c.post("/strict", json={"item": "tea", "langg": "fr"}), 422, "InputValidationError")
    assert error["errors"] == [{"loc": ["langg"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}]
    assert error["message"] == (
        "The payload does not match Order: 1 error(s) at langg (unknown field(s) 'langg'; the fields are: item, lang)."
    )
    both = assert_error(await c.post("/strict", json={"langg": "fr"}), 422, "InputValidationError")
    assert [e["loc"] for e in both["errors"]] == [["item"], ["langg"]]  # missing and unknown, in one answer
    assert (await c.post("/strict", json={"item": "tea", "lang": "fr"})).json() == "fr"
    assert (await c.post("/loose", json={"item": "tea", "langg": "fr"})).json() == "en"
    assert (await c.post("/open", json={"item": "tea", "langg": "fr"})).json() == "en"
    assert (await c.post("/plain", json={"lang": "fr", "langg": "x"})).json() == "fr"
    spec = (await c.get("/openapi.json")).json()["components"]["schemas"]
    assert spec["Order"]["additionalProperties"] is False and "additionalProperties" not in spec["LooseOrder"]


# -- the Host header --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("api.example.com", 200),
        ("API.Example.com:8443", 200),
        ("eu.models.example.org", 200),
        ("example.org", 403),  # *.example.org is its subdomains only
        ("10.0.0.5:80", 200),
        ("localhost:1234", 200),
        ("127.0.0.1", 200),
        ("[::1]:8000", 200),
        ("example.com", 403),
        ("api.example.com.attacker.net", 403),
        ("", 403),
    ],
)
async def test_allowed_hosts_accepts_loopback_and_the_names_listed(make: Make, host: str, status: int) -> None:
    c = await make(g.echoing(), allowed_hosts=["api.example.com", "*.example.org", "10.0.0.5"])
    r = await c.post("/", json=1, headers={"host": host})
    assert r.status_code == status, r.text
    if status == 403:
        error = assert_error(r, 403, "HostNotAllowed")
        assert "api.example.com, *.example.org, 10.0.0.5" in error["message"]
        assert assert_error(await c.get("/-/healthz", headers={"host": host}), 403, "HostNotAllowed")


async def test_a_mounted_app_accepts_any_host_unless_told(make: Make) -> None:
    """Behind the user's own server (or Serve's proxy) the Host is the server's business."""
    c = await make(g.echoing())
    assert (await c.post("/", json=1, headers={"host": "anything.example"})).json() == 1
    c = await make(g.echoing(), allowed_hosts=["*"])
    assert (await c.post("/", json=1, headers={"host": "anything.example"})).json() == 1
    c = await make(g.echoing(), allowed_hosts="api.example.com")  # one name, not its letters
    assert (await c.post("/", json=1, headers={"host": "api.example.com"})).json() == 1
    assert (await c.post("/", json=1, headers={"host": "a"})).status_code == 403


@pytest.mark.parametrize("entry", ["http://api.example.com", "api.example.com/x", "", "a b", "*x.example.com", 3])
def test_allowed_hosts_entries_must_be_host_names(entry: Any) -> None:
    with pytest.raises(dagserve.OptionsError, match="is not a host name"):
        dagserve.asgi_app(dagserve.deploy(g.echoing(), backend="local"), allowed_hosts=[entry])


HOSTILE_BODIES = {
    "malformed": b'{"x": ',
    "empty": b"",
    "deep": b"[" * 10_000 + b"]" * 10_000,
    "nan": b'{"x": NaN}',
    "infinity": b'{"x": Infinity}',
    "long int": b'{"x": ' + b"7" * 10_000 + b"}",
    "long float": b'{"x": ' + b"7" * 10_000 + b".0}",
    "invalid utf-8": b'{"x": "\xc3\x28"}',
    "duplicate keys": b'{"x": 1, "x": 2}',
    "lone surrogate": b'{"x": "\\udfff"}',
    "two documents": b"{} {}",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_BODIES))
async def test_hostile_bodies_get_400_with_the_error_body(make: Make, kind: str) -> None:
    # That their cost stays linear is test_ingress_jsonio's work-ratio test, not a clock here.
    c = await make(g.echoing())
    r = await c.post("/", content=HOSTILE_BODIES[kind], headers={"content-type": "application/json"})
    assert_error(r, 400, "InvalidJSON")


async def test_content_type_must_be_json_in_utf8(make: Make) -> None:
    c = await make(g.echoing())
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        error = assert_error(
            await c.post("/", content=b"{}", headers={"content-type": ctype}), 415, "UnsupportedMediaType"
        )
        assert "application/json" in error["message"]
    r = await c.post("/", content=b"{}", headers={"content-type": "application/json; charset=latin-1"})
    assert "UTF-8" in assert_error(r, 415, "UnsupportedMediaType")["message"]
    for ok in ("application/json", "application/json; charset=UTF-8", "application/problem+json"):
        r = await c.post("/", content=b'{"a": 1}', headers={"content-type": ok})
        assert r.status_code == 200 and r.json() == {"a": 1}, ok


async def test_a_body_without_content_type_is_refused_before_it_is_read(make: Make) -> None:
    """Issue 15: a web page can POST a body without a type to a local server without asking (a
    no-cors fetch); only application/json, which needs the server's consent, is accepted."""
    c = await make(g.echoing(), max_body_bytes=10)
    r = await c.post("/", content=b'{"a": "more than ten bytes"}')  # 413 had it been read first
    assert "content-type" not in r.request.headers
    error = assert_error(r, 415, "UnsupportedMediaType")
    assert "no Content-Type" in error["message"] and "application/json" in error["message"]


async def test_node_failure_is_500_naming_type_and_node_without_traceback(make: Make) -> None:
    c = await make(g.failing())
    r = await c.post("/", json=5, headers={"x-request-id": "req-500"})
    error = assert_error(r, 500, "ValueError", node="boom")
    assert error["request_id"] == "req-500"
    assert "boom at 5" in error["message"]


async def test_debug_mode_adds_the_traceback(make: Make) -> None:
    c = await make(g.failing(), debug=True)
    error = (await c.post("/", json=5)).json()["error"]
    assert error["type"] == "ValueError"
    assert "Traceback" in error["traceback"] and "raise ValueError" in error["traceback"]


async def test_request_deadline_is_504_naming_the_node_still_running(make: Make) -> None:
    c = await make(g.slow(), deploy={"request_timeout_s": 0.2})
    r = await c.post("/", json={"x": 1, "seconds": 5})
    error = assert_error(r, 504, "RequestTimeoutError", node="sleepy")
    assert "sleepy" in error["message"]


async def test_full_node_queue_is_503_with_retry_after(make: Make) -> None:
    c = await make(g.overloaded())
    rs = await asyncio.gather(*(c.post("/", json=i) for i in range(4)))
    codes = sorted(r.status_code for r in rs)
    assert codes == [200, 200, 503, 503]
    for r in rs:
        if r.status_code == 503:
            assert_error(r, 503, "OverloadedError", node="narrow")
            assert int(r.headers["retry-after"]) >= 1


async def test_ingress_bound_on_requests_in_flight_is_503_with_retry_after(make: Make) -> None:
    c = await make(g.slow(), max_in_flight=2)
    rs = await asyncio.gather(*(c.post("/", json={"x": i, "seconds": 0.3}) for i in range(5)))
    assert sorted(r.status_code for r in rs) == [200, 200, 503, 503, 503]
    rejected = next(r for r in rs if r.status_code == 503)
    assert "max_in_flight=2" in assert_error(rejected, 503, "OverloadedError")["message"]
    assert rejected.headers["retry-after"] == "1"
    # the bound frees up again
    assert (await c.post("/", json={"x": 9, "seconds": 0})).json() == 9


async def test_output_that_cannot_be_json_is_500_output_encoding_error(make: Make) -> None:
    c = await make(g.unwritable())
    error = assert_error(await c.post("/", json=1), 500, "OutputEncodingError")
    assert "lock" in error["message"]


async def test_numpy_pydantic_tuples_sets_and_nan_serialise(make: Make) -> None:
    c = await make(g.numeric())
    assert (await c.post("/", json=3)).json() == {
        "a": [0, 1, 2],
        "mean": 1.5,
        "point": {"x": 1.0, "y": 2.0},
        "pair": [1, 2],
        "set": [7],
        "nan": None,
    }


# -- body limits ------------------------------------------------------------------------------------------


async def test_declared_body_over_the_limit_is_413_once_the_rest_is_dropped(make: Make) -> None:
    """Within twice the limit the rest is read and dropped (a client that sends everything before
    reading then sees the 413) and the connection stays usable; beyond, nothing is read and the
    connection closes."""
    c = await make(g.echoing(), max_body_bytes=1000)
    r = await c.post("/", content=b"[" + b"1," * 600 + b"1]", headers={"content-type": "application/json"})
    error = assert_error(r, 413, "PayloadTooLarge")
    assert "1203 bytes" in error["message"] and "1000 bytes" in error["message"]
    assert "connection" not in r.headers
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(30):
            sent += 100
            yield b" " * 100

    r = await c.post("/", content=chunks(), headers={"content-type": "application/json", "content-length": "3000"})
    assert_error(r, 413, "PayloadTooLarge")
    assert r.headers["connection"] == "close"
    assert sent <= 100  # over twice the limit: not read at all
    assert (await c.post("/", json=list(range(10)))).status_code == 200


async def test_streamed_body_over_the_limit_is_413_while_streaming(make: Make) -> None:
    c = await make(g.echoing(), max_body_bytes=1000)
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):  # 10 kB offered, in 100-byte chunks, with no content-length
            sent += 100
            yield b" " * 100

    r = await c.post("/", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "PayloadTooLarge")
    assert r.headers["connection"] == "close"
    assert sent <= 2100  # reading stopped at twice the limit, not after the whole body


async def test_body_slower_than_the_deadline_is_408(make: Make) -> None:
    c = await make(g.echoing(), body_timeout_s=0.3)

    async def trickle() -> AsyncIterator[bytes]:
        yield b"[1,"
        await asyncio.sleep(60)
        yield b"2]"

    start = time.perf_counter()
    r = await c.post("/", content=trickle(), headers={"content-type": "application/json"})
    error = assert_error(r, 408, "RequestBodyTimeout")
    assert "0.3 s" in error["message"]
    assert time.perf_counter() - start < 30  # ordering: answered at the deadline, long before the body ends


async def test_bad_content_length_is_400(make: Make) -> None:
    c = await make(g.echoing())
    transport = c._transport
    request = httpx.Request(
        "POST", "http://test/", content=b"{}", headers={"content-length": "x2", "content-type": "application/json"}
    )
    r = await transport.handle_async_request(request)
    await r.aread()
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "BadRequest"


# -- auth -------------------------------------------------------------------------------------------------


async def test_bearer_token_guards_graph_routes_but_not_health(make: Make) -> None:
    c = await make([g.typed(), g.echoing()], token="s3cret")
    r = await c.post("/typed", json={"x": 1})
    error = assert_error(r, 401, "Unauthorized")
    assert r.headers["www-authenticate"] == 'Bearer realm="dagserve"'
    assert "Authorization: Bearer" in error["message"]
    for header in ("Bearer wrong", "Basic czNjcmV0", "Bearer s3cret2", "Bearer"):
        r = await c.post("/typed", json={"x": 1}, headers={"authorization": header})
        assert_error(r, 401, "Unauthorized")
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    ok = {"authorization": "Bearer s3cret"}
    assert (await c.post("/typed", json={"x": 1}, headers=ok)).status_code == 200
    assert (await c.post("/typed", json={"x": 1}, headers={"authorization": "bearer  s3cret "})).status_code == 200
    assert_error(await c.get("/"), 401, "Unauthorized")
    assert (await c.get("/", headers=ok)).status_code == 200
    assert_error(await c.get("/-/graph?graph=typed"), 401, "Unauthorized")
    for open_path in ("/-/healthz", "/-/ready", "/openapi.json", "/docs"):
        assert (await c.get(open_path)).status_code == 200, open_path


async def test_token_is_checked_before_the_body_is_read(make: Make) -> None:
    c = await make(g.echoing(), token="t", max_body_bytes=10)
    r = await c.post("/", content=b"x" * 100)
    assert_error(r, 401, "Unauthorized")


async def test_token_comes_from_the_environment(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSERVE_TOKEN", "from-env")
    c = await make(g.echoing())
    assert_error(await c.post("/", json=1), 401, "Unauthorized")
    assert (await c.post("/", json=1, headers={"authorization": "Bearer from-env"})).json() == 1
    explicit = await make(g.echoing(), token="arg")
    assert (await explicit.post("/", json=1, headers={"authorization": "Bearer arg"})).json() == 1


# -- request ids ------------------------------------------------------------------------------------------


async def test_request_id_reaches_node_code_logs_and_the_response(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    c = await make(g.identified())
    handler_filter = dagserve.RequestIdFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        with caplog.at_level(logging.INFO, logger="tests.ingress"):
            r = await c.post("/", json={"x": 1}, headers={"x-request-id": "abc-123_x.y:z"})
    finally:
        caplog.handler.removeFilter(handler_filter)
    assert r.headers["x-request-id"] == "abc-123_x.y:z"
    assert r.json() == {"request_id": "abc-123_x.y:z", "x": 1}
    [record] = [rec for rec in caplog.records if rec.name == "tests.ingress"]
    assert record.request_id == "abc-123_x.y:z"  # type: ignore[attr-defined]
    assert dagserve.current_request_id() is None  # nothing leaks out of the request


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "semi;colon", 'quote"', "é"])
async def test_insane_request_ids_are_replaced(make: Make, bad: str) -> None:
    c = await make(g.identified())
    r = await c.post("/", json={"x": 1}, headers={"x-request-id": bad.encode("utf-8")})
    rid = r.headers["x-request-id"]
    assert HEX32.fullmatch(rid)
    assert r.json()["request_id"] == rid


async def test_every_response_carries_a_request_id(make: Make) -> None:
    c = await make(g.typed())
    for method, path in [("GET", "/-/healthz"), ("GET", "/missing"), ("GET", "/typed"), ("GET", "/openapi.json")]:
        r = await c.request(method, path)
        assert HEX32.fullmatch(r.headers["x-request-id"]), path


def test_request_id_filter_keeps_explicit_ids_and_defaults_outside_requests() -> None:
    f = dagserve.RequestIdFilter(default="none")
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert f.filter(rec) and rec.request_id == "none"  # type: ignore[attr-defined]
    rec2 = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    rec2.request_id = "given"
    assert f.filter(rec2) and rec2.request_id == "given"


# -- introspection routes and hooks -----------------------------------------------------------------------


async def test_plan_json_and_live_svg(make: Make) -> None:
    c = await make([g.typed(), g.echoing()])
    plan = (await c.get("/-/graph?graph=typed")).json()
    assert plan["graph"] == "typed"
    assert {d["name"] for d in plan["deployments"]} == {"double"}
    assert "?graph=<name>" in assert_error(await c.get("/-/graph"), 400, "BadRequest")["message"]
    assert_error(await c.get("/-/graph?graph=nope"), 404, "NotFound")
    r = await c.get("/-/graph.svg?graph=typed")
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    assert r.text.lstrip().startswith("<?xml") and "double" in r.text


async def test_admin_routes_mount_only_with_an_admin_token(make: Make) -> None:
    without = await make(g.typed(), token="usr")
    assert_error(await without.get("/-/admin/status", headers={"authorization": "Bearer usr"}), 404, "NotFound")
    c = await make(g.typed(), admin_token="adm", token="usr")
    # the admin module checks its own token: 401 without one, 403 for another (even the graph token)
    assert_error(await c.get("/-/admin/status"), 401, "Unauthorized")
    assert (await c.get("/-/admin/status", headers={"authorization": "Bearer usr"})).status_code == 403
    r = await c.get("/-/admin/status", headers={"authorization": "Bearer adm"})
    assert r.status_code == 200 and list(r.json()["graphs"]) == ["typed"]
    assert HEX32.fullmatch(r.headers["x-request-id"])
    assert_error(await c.get("/-/admin/nope", headers={"authorization": "Bearer adm"}), 404, "NotFound")


async def test_metrics_are_served_behind_the_graph_token(make: Make) -> None:
    c = await make(g.typed(), token="t")
    assert_error(await c.get("/metrics"), 401, "Unauthorized")
    assert (await c.post("/", json={"x": 2}, headers={"authorization": "Bearer t"})).status_code == 200
    r = await c.get("/metrics", headers={"authorization": "Bearer t"})
    assert r.status_code == 200 and 'dagserve_requests_total{graph="typed",outcome="ok",protocol="http"}' in r.text


# -- building the ingress -----------------------------------------------------------------------------------


def test_graph_names_that_clash_with_routes_or_each_other_are_refused() -> None:
    with pytest.raises(dagserve.GraphError, match="Graph name 'docs' is reserved: .* /docs is the API page"):
        dagserve.Graph(g.echo, name="docs")
    a = dagserve.deploy(g.typed(), backend="local")
    b = dagserve.deploy(g.typed(), backend="local")
    try:
        with pytest.raises(dagserve.GraphError, match="Two Apps are named 'typed'"):
            dagserve.asgi_app([a, b])
    finally:
        a.shutdown()
        b.shutdown()
    with pytest.raises(dagserve.GraphError, match="needs at least one App"):
        dagserve.asgi_app([])
    with pytest.raises(dagserve.GraphError, match="takes deployed Apps"):
        dagserve.asgi_app([g.typed()])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_body_bytes", 0),
        ("max_body_bytes", 1.5),
        ("body_timeout_s", -1),
        ("max_in_flight", 0),
        ("max_in_flight", True),
    ],
)
def test_invalid_limits_are_refused(option: str, value: Any) -> None:
    with dagserve.deploy(g.typed(), backend="local") as app:
        with pytest.raises(dagserve.OptionsError, match=f"{option}={value!r} is invalid"):
            app.asgi(**{option: value})


def test_the_ingress_is_reachable_from_the_starlette_app() -> None:
    with dagserve.deploy(g.typed(), backend="local") as app:
        web = app.asgi(max_in_flight=3)
        assert isinstance(web, Starlette)
        assert isinstance(web.state.dagserve, Ingress)
        assert web.state.dagserve.config.max_in_flight == 3


# -- mounting inside a user's own app ---------------------------------------------------------------------------


@pytest.fixture
def user_app() -> Iterator[tuple[Starlette, dagserve.App]]:
    app = dagserve.deploy(g.typed(), backend="local")

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("my site")

    web = Starlette(routes=[Route("/", home), Mount("/ml", app=app.asgi())])
    yield web, app
    app.shutdown()


async def test_mounted_inside_a_users_starlette_app(user_app: tuple[Starlette, dagserve.App]) -> None:
    web, _ = user_app
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://test") as c:
        assert (await c.get("/")).text == "my site"
        assert (await c.post("/ml/", json={"x": 2})).json() == {"y": 4, "tag": "a"}
        assert (await c.post("/ml/typed", json={"x": 3})).json() == {"y": 6, "tag": "a"}
        assert_error(await c.post("/ml/typed", json={"x": "a"}), 422, "InputValidationError")
        assert_error(await c.get("/ml/missing"), 404, "NotFound")
        doc = (await c.get("/ml/openapi.json")).json()
        assert doc["servers"] == [{"url": "/ml"}]
        page = (await c.get("/ml/docs")).text
        assert 'data-spec-url="openapi.json"' in page and "swagger-ui" in page
        # Relative to /ml/docs, the page's files are under the mount too.
        assert (await c.get("/ml/-/static/swagger-ui/swagger-ui-bundle.js")).status_code == 200
