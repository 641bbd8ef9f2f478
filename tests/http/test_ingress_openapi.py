"""The ingress's OpenAPI 3.1 document: valid, and describing each graph's request, response and errors."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel

import dagserve
from examples.quickstart import graph as quickstart
from tests import ingress_graphs as g

ERRORS = {"400", "408", "413", "415", "422", "500", "503", "504"}


class Reply(BaseModel):
    label: str
    score: float


@dagserve.node
def to_reply(x: int) -> Reply:
    return Reply(label="ok", score=float(x))


@dagserve.node
def count(x: int) -> int:
    return x


@dagserve.node
def untyped(x):  # type: ignore[no-untyped-def]
    return x


def shaped() -> dagserve.Graph:
    with dagserve.Input(schema=g.Item) as inp:
        out = {
            "reply": to_reply(inp["x"]),
            "pair": (count(inp["x"]), "const"),
            "anything": untyped(inp["x"]),
            "routed": dagserve.switch(inp["tag"], {"a": count(inp["x"]), "b": to_reply(inp["x"])}),
            "payload": inp,
        }
    return dagserve.Graph(out, name="shaped")


@pytest.fixture
def deployed() -> Iterator[list[dagserve.App]]:
    apps = [dagserve.deploy(gr, backend="local") for gr in (shaped(), g.echoing(), quickstart)]
    yield apps
    for a in apps:
        a.shutdown()


async def fetch(web: Any, path: str = "/openapi.json") -> dict[str, Any]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://test") as c:
        r = await c.get(path)
        assert r.status_code == 200
        return r.json()


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return doc["components"]["schemas"][ref.rsplit("/", 1)[1]]


async def test_single_graph_document_is_valid_openapi_31(deployed: list[dagserve.App]) -> None:
    doc = await fetch(deployed[2].asgi())
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] == "dagserve: reviews"
    jobs = {"/jobs", "/reviews/jobs", "/-/jobs", "/-/jobs/{job_id}"}  # http/job_routes.py
    assert {p for p in doc["paths"] if not p.startswith("/v2")} == {"/", "/reviews", "/-/healthz", "/-/ready"} | jobs
    assert doc["paths"]["/jobs"]["post"]["operationId"] == "submit_reviews_root"
    assert {p for p in doc["paths"] if p.startswith("/v2")} == {  # the Open Inference Protocol (http/oip_rest.py)
        "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/reviews", "/v2/models/reviews/ready",
        "/v2/models/reviews/infer",
    }
    op = doc["paths"]["/"]["post"]
    assert op["operationId"] == "run_reviews_root"
    assert doc["paths"]["/reviews"]["post"]["operationId"] == "run_reviews"
    request = resolve(doc, op["requestBody"]["content"]["application/json"]["schema"])
    assert request["required"] == ["text"]
    assert set(request["properties"]) == {"text", "lang"}
    assert set(op["responses"]) == {"200"} | ERRORS  # no 401 without a token
    assert "security" not in op
    for status in ERRORS:
        response = op["responses"][status]
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/dagserve.Error"}
        assert "x-request-id" in response["headers"]
    assert "retry-after" in op["responses"]["503"]["headers"]
    # both branches of the quickstart's switch return dict[str, object]
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "type": "object",
        "additionalProperties": True,
    }


async def test_response_schema_follows_the_output_structure_and_annotations(deployed: list[dagserve.App]) -> None:
    doc = await fetch(dagserve.asgi_app(deployed))
    validate(doc)
    schema = doc["paths"]["/shaped"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["type"] == "object"
    assert schema["required"] == ["anything", "pair", "payload", "reply", "routed"]
    props = schema["properties"]
    assert resolve(doc, props["reply"])["required"] == ["label", "score"]
    assert props["pair"] == {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"const": "const"}],
        "minItems": 2,
        "maxItems": 2,
    }
    assert props["anything"] == {}
    assert props["routed"]["anyOf"][0] == {"type": "integer"}
    assert resolve(doc, props["routed"]["anyOf"][1])["title"] == "Reply"
    assert set(resolve(doc, props["payload"])["properties"]) == {"x", "tag"}
    # an untyped input takes any JSON
    echo = doc["paths"]["/echo"]["post"]
    assert echo["requestBody"]["content"]["application/json"]["schema"] == {}


async def test_several_graphs_with_a_token_document_listing_and_security(deployed: list[dagserve.App]) -> None:
    doc = await fetch(dagserve.asgi_app(deployed, token="t"))
    validate(doc)
    jobs = {"/shaped/jobs", "/echo/jobs", "/reviews/jobs", "/-/jobs", "/-/jobs/{job_id}"}
    assert {p for p in doc["paths"] if not p.startswith("/v2")} == {"/", "/shaped", "/echo", "/reviews", "/-/healthz", "/-/ready"} | jobs
    assert doc["paths"]["/v2/models/echo/infer"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in doc["paths"]["/v2/health/live"]["get"]
    assert doc["info"]["title"] == "dagserve"
    assert doc["components"]["securitySchemes"] == {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    for path in ("/shaped", "/echo", "/reviews"):
        op = doc["paths"][path]["post"]
        assert op["security"] == [{"bearerAuth": []}]
        assert "www-authenticate" in op["responses"]["401"]["headers"]
    listing = doc["paths"]["/"]["get"]
    assert listing["security"] == [{"bearerAuth": []}] and "401" in listing["responses"]
    assert "security" not in doc["paths"]["/-/ready"]["get"]


async def test_error_schema_matches_real_error_bodies(deployed: list[dagserve.App]) -> None:
    import jsonschema

    web = deployed[2].asgi()
    doc = await fetch(web)
    error_schema = doc["components"]["schemas"]["dagserve.Error"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://test") as c:
        for r in [await c.post("/", json={"lang": 1}), await c.post("/", content=b"{"), await c.get("/x")]:
            jsonschema.validate(r.json(), error_schema)


async def test_docs_page_loads_swagger_ui_on_the_document(deployed: list[dagserve.App]) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=deployed[2].asgi(title="Reviews <API>")), base_url="http://t"
    ) as c:
        r = await c.get("/docs")
        bundle = await c.get("/-/static/swagger-ui/swagger-ui-bundle.js")
    assert r.headers["content-type"].startswith("text/html")
    assert "<title>Reviews &lt;API&gt;</title>" in r.text
    # Swagger UI from the package (http/assets.py), started by a file: no CDN, no inline script.
    assert '<script src="-/static/swagger-ui/swagger-ui-bundle.js" defer></script>' in r.text
    assert 'data-spec-url="openapi.json"' in r.text
    assert "http" not in r.text.replace("http-equiv", "")
    assert "<script>" not in r.text
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")


# -- switches on input fields: the values they accept --------------------------------------------


class Lang(str, enum.Enum):
    EN = "en"
    FR = "fr"
    DE = "de"


class Routed(BaseModel):
    lang: str
    kind: Lang = Lang.DE
    level: int = 5
    mode: str = "a"


@dagserve.node
def tag(x: Any) -> str:
    return str(x)


def request_schema(doc: dict[str, Any], path: str) -> dict[str, Any]:
    return resolve(doc, doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"])


async def test_a_switch_without_a_default_lists_the_values_its_input_field_accepts() -> None:
    app = dagserve.deploy(g.routed(), backend="local")
    try:
        web = app.asgi()
        doc = await fetch(web)
        validate(doc)
        schema = request_schema(doc, "/routed")
        assert schema["properties"]["lang"] == {"title": "Lang", "type": "string", "enum": ["en", "fr"]}
        # style's default (0) is a case, so it may still be left out.
        assert schema["properties"]["style"] == {"title": "Style", "type": "integer", "enum": [0, 1], "default": 0}
        assert schema["properties"]["name"] == {"title": "Name", "type": "string"}  # its switch has a default
        assert schema["required"] == ["name", "lang"]
        # The model's own component is left as it is: other graphs may use it without a switch.
        assert "enum" not in doc["components"]["schemas"]["Greeting"]["properties"]["lang"]
        # The server answers exactly as described: listed values are served, others get 422.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://test") as c:
            for lang in ("en", "fr"):
                for style in ([0, 1], []):
                    body = {"name": "n", "lang": lang} | ({"style": style[0]} if style else {})
                    assert (await c.post("/", json=body)).status_code == 200, body
            for body in ({"name": "n", "lang": ""}, {"name": "n", "lang": "de"}, {"name": "n", "lang": "en", "style": 2}):
                r = await c.post("/", json=body)
                assert r.status_code == 422 and r.json()["error"]["type"] == "NoRouteError", body
    finally:
        app.shutdown()


async def test_enums_are_intersected_made_required_and_left_out_where_a_switch_runs_only_sometimes() -> None:
    with dagserve.Input(schema=Routed) as inp:
        out = {
            # two switches on lang: only the values both take are served
            "a": dagserve.switch(inp["lang"], {"en": tag(inp["lang"]), "fr": tag(inp["lang"]), "de": tag(inp)}),
            "b": dagserve.switch(inp["lang"], {"fr": tag(inp), "en": tag(inp), "it": tag(inp)}),
            # kind's default (DE) is no case: leaving kind out gets 422, so it becomes required
            "c": dagserve.switch(inp["kind"], {Lang.EN: tag(inp), Lang.FR: tag(inp)}),
            # a switch in one branch of a split runs for some requests only: level stays open
            "d": dagserve.split(
                {"x": dagserve.switch(inp["level"], {1: tag(inp)}), "y": tag(inp)}, {"x": 50, "y": 50}
            ),
            # a switch with a default takes anything
            "e": dagserve.switch(inp["mode"], {"a": tag(inp)}, default=tag(inp)),
        }
        graph = dagserve.Graph(out, name="narrowed")
    app = dagserve.deploy(graph, backend="local")
    try:
        doc = await fetch(app.asgi())
    finally:
        app.shutdown()
    validate(doc)
    schema = request_schema(doc, "/")
    props = schema["properties"]
    assert props["lang"]["enum"] == ["en", "fr"]
    assert props["kind"]["enum"] == ["en", "fr"] and "default" not in props["kind"]
    assert schema["required"] == ["lang", "kind"]
    assert "enum" not in props["level"] and "enum" not in props["mode"]
