"""Files in and bytes out over real uvicorn on 127.0.0.1, local backend: multipart, raw and base64
bodies, bytes and File answers, every refusal (bad multipart, limits, unknown parts, other origins)
and the same request pipeline as JSON. The Ray backend: test_binary_ray.py (same checks)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import dagserve
from dagserve.http.settings import IngressConfig
from dagserve.http.ingress import create_app
from examples.digits_png import graph as digits_png
from tests import binary_checks as checks
from tests import binary_graphs as bg
from tests import ingress_graphs as ig
from tests.background_server import BackgroundServer

pytestmark = pytest.mark.http

PROTOCOLS: list[str] = []


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[str, dagserve.App]]:
    deployed = {g.name: dagserve.deploy(g, backend="local") for g in [f() for f in bg.ALL] + [digits_png, ig.typed()]}
    for app in deployed.values():
        app.observers.append(lambda app, ctx, error, seconds: PROTOCOLS.append(ctx.protocol))
    yield deployed
    for app in deployed.values():
        app.shutdown()


@pytest.fixture(scope="module")
def url(apps: dict[str, dagserve.App]) -> Iterator[str]:
    # Small limits, to reach them cheaply.
    config = IngressConfig(max_body_bytes=64 * 1024, max_form_parts=8, max_form_field_bytes=64)
    with BackgroundServer(create_app(apps, config)) as base:
        yield base.rstrip("/")


def error(r: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["type"] == error_type and body["status"] == status and body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    return body  # type: ignore[no-any-return]


# -- what works --------------------------------------------------------------------------------------


def test_multipart_fills_the_file_field_and_validates_form_fields(url: str) -> None:
    checks.check_multipart(url)
    r = httpx.post(f"{url}/upload", files={"image": ("a.png", b"x", "image/png")}, data={"scale": "big"})
    body = error(r, 422, "InputValidationError")
    assert body["errors"][0]["loc"] == ["scale"]


def test_raw_body_fills_the_one_file_field_and_the_query_string_the_others(url: str) -> None:
    checks.check_raw(url)


def test_json_takes_base64_for_binary_fields(url: str) -> None:
    checks.check_base64(url)
    r = httpx.post(f"{url}/blob", json={"data": base64.urlsafe_b64encode(b"\xfb\xff").decode().rstrip("=")})
    assert r.content == b"\xfb\xff"  # URL-safe alphabet, padding left out


def test_a_file_output_answers_its_bytes_with_its_type_and_name(url: str) -> None:
    checks.check_file_answer(url)
    r = httpx.post(f"{url}/blob", json={"data": base64.b64encode(b"raw").decode()})
    assert (r.content, r.headers["content-type"]) == (b"raw", "application/octet-stream")
    assert "content-disposition" not in r.headers


def test_the_example_answers_a_png_drawn_by_a_node(url: str) -> None:
    checks.check_png_answer(url)


def test_bytes_inside_a_structured_output_are_base64_json(url: str) -> None:
    r = httpx.post(f"{url}/mixed_out", json={"data": base64.b64encode(b"ab").decode()})
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"data": "YWI=", "file": {"content": "YWI=", "filename": "d.bin", "content_type": "application/x-d"}}


def test_a_stream_of_bytes_is_a_stream_of_base64_items(url: str) -> None:
    body = {"data": base64.b64encode(b"ab").decode(), "repeat": 3}
    r = httpx.post(f"{url}/byte_stream", json=body, headers={"accept": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    assert [json.loads(line) for line in r.text.splitlines()] == ["YWI="] * 3


def test_app_call_returns_the_objects_themselves(apps: dict[str, dagserve.App]) -> None:
    assert apps["blob"].call({"data": b"ab", "repeat": 2}) == b"abab"
    f = apps["file_out"].call({"data": b"ab"})
    assert f == dagserve.File(b"ab", filename="échelle 1.png", content_type="image/png")


def test_lists_of_files_repeated_fields_and_json_parts(url: str) -> None:
    files = [
        ("a", ("a", b"1", "application/octet-stream")),
        ("more", ("m1", b"12", "image/png")),
        ("more", ("m2", b"123", "image/png")),
        ("meta", ("", b'{"k": [1, 2]}', "application/json")),
    ]
    r = httpx.post(f"{url}/pairs", files=files, data={"tags": ["x", "y"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"a": checks.sha(b"1"), "b": None, "more": [["m1", 2], ["m2", 3]], "tags": ["x", "y"], "meta": {"k": [1, 2]}}


def test_binary_bodies_run_in_the_same_request_pipeline(url: str) -> None:
    """Same scope as JSON: protocol "http", a Server-Timing header on request, the metrics' count."""
    PROTOCOLS.clear()
    trace = {"x-dagserve-trace": "1"}
    r1 = httpx.post(f"{url}/upload", files={"image": ("a.png", b"x", "image/png")}, headers=trace)
    r2 = httpx.post(f"{url}/upload", content=b"x", headers={"content-type": "image/png", **trace})
    assert r1.status_code == r2.status_code == 200
    assert "describe" in r1.headers["server-timing"] and "describe" in r2.headers["server-timing"]
    assert PROTOCOLS == ["http", "http"]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'dagserve_requests_total{graph="upload",outcome="ok",protocol="http"}' in metrics


# -- what is refused ---------------------------------------------------------------------------------

HEAD = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (HEAD + b"abc", "multipart/form-data; boundary=b", "ends inside part 1"),
        (HEAD + b"abc\r\n--b--", "multipart/form-data", "has no boundary parameter"),
        (b"just bytes", "multipart/form-data; boundary=b", "does not contain its boundary line '--b'"),
        (b"--b\r\nX: y\r\n\r\nabc\r\n--b--", "multipart/form-data; boundary=b", "no Content-Disposition"),
    ],
)
def test_malformed_multipart_is_a_400_that_says_why(url: str, body: bytes, content_type: str, message: str) -> None:
    with httpx.Client(base_url=url) as c:
        body_error = error(c.post("/upload", content=body, headers={"content-type": content_type}), 400, "InvalidMultipart")
        assert message in body_error["message"]
        assert c.post("/upload", content=b"x", headers={"content-type": "image/png"}).status_code == 200  # still serving


def test_too_many_parts_and_too_large_fields_are_413(url: str) -> None:
    r = httpx.post(f"{url}/pairs", files={"a": ("a", b"1")}, data={"tags": [str(i) for i in range(9)]})
    assert "more than 8 parts (max_form_parts)" in error(r, 413, "MultipartTooLarge")["message"]
    r = httpx.post(f"{url}/upload", files={"image": ("a", b"1")}, data={"note": "n" * 65})
    assert "form field 'note' holds 65 bytes" in error(r, 413, "MultipartTooLarge")["message"]


def test_the_body_limit_applies_while_a_multipart_body_streams_in(url: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="big"\r\n\r\n'
        for _ in range(100):
            yield b"\0" * 4096  # chunked, no Content-Length: counted as it arrives

    r = httpx.post(f"{url}/upload", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert "the limit is 65536 bytes" in error(r, 413, "PayloadTooLarge")["message"]


def test_unknown_parts_and_fields_are_422_naming_them(url: str) -> None:
    r = httpx.post(f"{url}/upload", files={"image": ("a", b"1"), "thumbnail": ("t", b"2")}, data={"colour": "red"})
    body = error(r, 422, "InputValidationError")
    assert "'thumbnail'" in body["message"] and "'colour'" in body["message"]
    assert sorted(e["loc"][0] for e in body["errors"]) == ["colour", "thumbnail"]
    assert {e["type"] for e in body["errors"]} == {"extra_forbidden"}
    r = httpx.post(f"{url}/upload?colour=red", content=b"x", headers={"content-type": "image/png"})
    assert error(r, 422, "InputValidationError")["errors"][0]["loc"] == ["colour"]
    r = httpx.post(f"{url}/upload?image=x", content=b"x", headers={"content-type": "image/png"})
    assert "is the request body" in error(r, 422, "InputValidationError")["errors"][0]["msg"]
    r = httpx.post(f"{url}/upload", files={"image": ("a", b"1")}, data={"note": ["a", "b"]})
    assert error(r, 422, "InputValidationError")["errors"][0]["msg"] == "Given 2 times; this field takes one value."


def test_bad_base64_is_a_422_naming_the_field(url: str) -> None:
    r = httpx.post(f"{url}/pairs", json={"a": "AAAA", "more": ["AAAA", "not base64!"]})
    assert error(r, 422, "InputValidationError")["errors"][0]["loc"] == ["more", 1]


@pytest.mark.parametrize(
    ("path", "content_type", "message"),
    [
        ("/upload", "application/x-www-form-urlencoded", "curl's --data-binary sends application/x-www-form-urlencoded"),
        ("/pairs", "image/png", "this graph's schema has 3 (a, b, more); send multipart/form-data"),
        ("/typed", "multipart/form-data; boundary=b", "has no bytes or dagserve.File field"),
        ("/typed", "image/png", "send the body as application/json"),
    ],
)
def test_bodies_a_graph_cannot_take_are_415(url: str, path: str, content_type: str, message: str) -> None:
    r = httpx.post(url + path, content=b"x", headers={"content-type": content_type})
    assert message in error(r, 415, "UnsupportedMediaType")["message"]


# What browsers send with a form posted from another site (Chromium 120+; Firefox sends the same
# Origin and Sec-Fetch-Site), and with a no-cors fetch from a page on another port of this host.
CROSS_SITE_FORM = {"origin": "https://evil.example", "sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate", "sec-fetch-dest": "document"}
SAME_SITE_FETCH = {"origin": "http://127.0.0.1:1", "sec-fetch-site": "same-site", "sec-fetch-mode": "no-cors", "sec-fetch-dest": "empty"}
OLD_BROWSER = {"origin": "http://evil.example"}  # no Fetch Metadata


@pytest.mark.parametrize("headers", [CROSS_SITE_FORM, SAME_SITE_FETCH, OLD_BROWSER])
def test_multipart_and_raw_bodies_from_other_origins_are_403(url: str, headers: dict[str, str]) -> None:
    PROTOCOLS.clear()
    r = httpx.post(f"{url}/upload", files={"image": ("a.png", b"x", "image/png")}, headers=headers)
    assert "comes from a web page of another origin" in error(r, 403, "CrossOriginRefused")["message"]
    r = httpx.post(f"{url}/upload", content=b"x", headers={"content-type": "text/plain", **headers})
    error(r, 403, "CrossOriginRefused")
    assert PROTOCOLS == []  # refused before the graph was entered


def test_the_servers_own_pages_and_json_from_anywhere_are_accepted(url: str) -> None:
    own = {"origin": url, "sec-fetch-site": "same-origin", "sec-fetch-mode": "cors", "sec-fetch-dest": "empty"}
    r = httpx.post(f"{url}/upload", files={"image": ("a.png", b"x", "image/png")}, headers=own)
    assert r.status_code == 200, r.text
    # JSON needs a CORS preflight that the server never grants: a browser never sends it cross-site.
    r = httpx.post(f"{url}/upload", json={"image": "eA=="}, headers=CROSS_SITE_FORM)
    assert r.status_code == 200, r.text


def test_the_token_is_checked_before_the_body(apps: dict[str, dagserve.App]) -> None:
    with BackgroundServer(dagserve.asgi_app(apps["upload"], token="t")) as base:
        r = httpx.post(f"{base.rstrip('/')}/upload", files={"image": ("a", b"x")})
        error(r, 401, "Unauthorized")
        r = httpx.post(f"{base.rstrip('/')}/upload", files={"image": ("a", b"x")}, headers={"authorization": "Bearer t"})
        assert r.status_code == 200, r.text


def test_openapi_describes_multipart_raw_and_binary_answers(url: str) -> None:
    from openapi_spec_validator import validate

    doc = httpx.get(f"{url}/openapi.json").json()
    validate(doc)
    upload = doc["paths"]["/upload"]["post"]
    content = upload["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["properties"]["image"] == {"type": "string", "format": "binary"}
    assert content["multipart/form-data"]["schema"]["required"] == ["image"]
    assert {"application/json", "application/octet-stream", "image/*"} <= set(content)
    assert "the other fields (note, scale) then come from the query string" in upload["description"]
    pairs = doc["paths"]["/pairs"]["post"]["requestBody"]["content"]
    assert "image/*" not in pairs and pairs["multipart/form-data"]["schema"]["properties"]["more"]["type"] == "array"
    assert set(doc["paths"]["/file_out"]["post"]["responses"]["200"]["content"]) == {"*/*"}
    assert doc["components"]["schemas"]["Blob"]["properties"]["data"]["contentEncoding"] == "base64"
    assert set(doc["paths"]["/typed"]["post"]["requestBody"]["content"]) == {"application/json"}
