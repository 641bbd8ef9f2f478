"""The OIP REST routes (dagserve/http/oip_rest.py) in process: JSON and binary tensors, the OIP error
shape on every /v2 refusal (the ingress's own too), the origin rule for bodies without a type."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

import dagserve
from tests import oip_graphs as og

BODY = {
    "id": "req-1",
    "inputs": [
        {"name": "pixels", "datatype": "FP32", "shape": [2, 4], "data": [0, 1, 2, 3, 4, 5, 6, 7]},
        {"name": "name", "datatype": "BYTES", "shape": [1], "data": ["ada"]},
    ],
}


SEEN: list[dagserve.RequestContext] = []


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    apps = [dagserve.deploy(g, backend="local", request_timeout_s=10) for g in og.ALL]
    SEEN.clear()
    apps[0].observers.append(lambda app, ctx, error, seconds: SEEN.append(ctx))
    web = dagserve.asgi_app(apps, token="tok", max_body_bytes=64 * 1024, max_in_flight=1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://test") as c:
        yield c
    for app in apps:
        app.shutdown()


AUTH = {"authorization": "Bearer tok"}


def oip_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    return body["error"]  # type: ignore[no-any-return]


async def test_health_needs_no_token_and_the_rest_does(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert oip_error(await client.get("/v2"), 401).startswith("This route needs a bearer token")
    assert (await client.get("/v2", headers=AUTH)).json()["extensions"] == ["binary_tensor_data"]
    assert oip_error(await client.get("/v2/models/tensors"), 401)
    assert oip_error(await client.post("/v2/models/tensors/infer", json=BODY), 401)
    assert oip_error(await client.post("/v2/models/nope/infer", json=BODY), 401)  # models stay unknown without it
    assert (await client.get("/v2/models/tensors/ready", headers=AUTH)).json() == {"name": "tensors", "ready": True}
    meta = (await client.get("/v2/models/tensors/versions/1", headers=AUTH)).json()
    assert meta["name"] == "tensors" and meta["versions"] == ["1"] and len(meta["inputs"]) == 4
    assert "no version '7'" in oip_error(await client.get("/v2/models/tensors/versions/7", headers=AUTH), 404)


async def test_json_infer_gives_the_values_of_app_call(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/models/tensors/versions/1/infer", json=BODY, headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-1" and doc["model_name"] == "tensors"
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["sums"] == {"name": "sums", "datatype": "FP32", "shape": [2], "data": [6.0, 22.0]}
    assert outputs["greeting"]["data"] == ["hello ada"] and outputs["rows"]["data"] == [2]
    assert [(ctx.request_id, ctx.protocol) for ctx in SEEN] == [(r.headers["x-request-id"], "oip")]
    await client.post("/tensors", json={"pixels": [[1, 1, 1, 1]], "name": "x"}, headers=AUTH)
    assert SEEN[-1].protocol == "http"


async def test_binary_tensor_data_in_and_out(client: httpx.AsyncClient) -> None:
    pixels = np.arange(8, dtype=np.float32).reshape(2, 4)
    name = struct.pack("<I", 3) + b"bob"
    header = json.dumps({
        "inputs": [
            {"name": "pixels", "datatype": "FP32", "shape": [2, 4], "parameters": {"binary_data_size": 32}},
            {"name": "name", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(name)}},
        ],
        "outputs": [{"name": "sums", "parameters": {"binary_data": True}}, {"name": "greeting"}],
    }).encode()
    body = header + pixels.tobytes() + name
    r = await client.post(  # no Content-Type, as tritonclient.http sends it
        "/v2/models/tensors/infer", content=body,
        headers={**AUTH, "inference-header-content-length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    size = int(r.headers["inference-header-content-length"])
    doc = json.loads(r.content[:size])
    assert [o["name"] for o in doc["outputs"]] == ["sums", "greeting"]
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(r.content[size:], "<f4").tolist() == [6.0, 22.0]
    assert doc["outputs"][1]["data"] == ["hello bob"]
    extra = await client.post(
        "/v2/models/tensors/infer", content=body + b"!", headers={**AUTH, "inference-header-content-length": str(len(header))}
    )
    assert oip_error(extra, 400) == "The body holds 1 bytes of binary data that no input claims."


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"datatype": "FP64"}, "Input 'pixels' has datatype FP64; it takes FP32."),
        ({"shape": [4, 2]}, "Input 'pixels' has shape [4, 2]; it takes shape [-1, 4] (-1: any size)."),
        ({"name": "colour"}, "The model has no input 'colour'; its inputs are ['name', 'pixels', 'scale', 'tags']."),
        ({"shape": [3, 4]}, "Input 'pixels' has 8 elements of data; its shape [3, 4] needs 12."),
    ],
)
async def test_bad_tensors_are_400_naming_the_input(client: httpx.AsyncClient, change: dict[str, Any], message: str) -> None:
    body = json.loads(json.dumps(BODY))
    body["inputs"][0].update(change)
    assert oip_error(await client.post("/v2/models/tensors/infer", json=body, headers=AUTH), 400) == message


async def test_every_refusal_on_v2_has_the_oip_shape(client: httpx.AsyncClient) -> None:
    assert "no model 'nope'" in oip_error(await client.post("/v2/models/nope/infer", json=BODY, headers=AUTH), 404)
    assert "no route '/v2/models/tensors/nothing'" in oip_error(await client.get("/v2/models/tensors/nothing"), 404)
    big = {**BODY, "pad": "x" * 70_000}
    assert "limit is 65536 bytes" in oip_error(await client.post("/v2/models/tensors/infer", json=big, headers=AUTH), 413)
    typed = await client.post("/v2/models/tensors/infer", content=b"{}", headers={**AUTH, "content-type": "text/plain"})
    assert "content type is 'text/plain'" in oip_error(typed, 415)
    node = oip_error(await client.post("/v2/models/failing/infer", json=_count(1), headers=AUTH), 500)
    assert node.startswith("Node 'explode' raised ValueError: cannot count to 1")
    streaming = oip_error(await client.post("/v2/models/counting/infer", json=_count(2), headers=AUTH), 400)
    assert "streams its answer" in streaming and "ModelStreamInfer" in streaming
    # max_in_flight=1: a second request while one sleeps is 503 with Retry-After.
    sleeping = asyncio.create_task(client.post("/v2/models/sleepy/infer", json=_count(1), headers=AUTH))
    await asyncio.sleep(0.3)
    busy = await client.post("/v2/models/tensors/infer", json=BODY, headers=AUTH)
    assert "max_in_flight=1" in oip_error(busy, 503) and busy.headers["retry-after"]
    assert (await sleeping).status_code == 200


def _count(n: int) -> dict[str, Any]:
    return {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [n]},
                       {"name": "word", "datatype": "BYTES", "shape": [1], "data": ["w"]}]}


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"origin": "http://evil.example"}, "its Origin is 'http://evil.example'"),
        ({"sec-fetch-site": "cross-site"}, "its Sec-Fetch-Site header says 'cross-site'"),
        ({"sec-fetch-site": "same-site", "origin": "http://test"}, "its Sec-Fetch-Site header says 'same-site'"),
    ],
)
async def test_a_cross_site_body_without_a_type_is_403(client: httpx.AsyncClient, headers: dict[str, str], why: str) -> None:
    body = json.dumps(BODY).encode()
    assert why in oip_error(await client.post("/v2/models/tensors/infer", content=body, headers={**AUTH, **headers}), 403)


async def test_a_body_without_a_type_from_a_program_or_the_same_origin_is_served(client: httpx.AsyncClient) -> None:
    body = json.dumps(BODY).encode()
    for headers in ({}, {"origin": "http://test", "sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"}):
        assert (await client.post("/v2/models/tensors/infer", content=body, headers={**AUTH, **headers})).status_code == 200


async def test_the_json_route_takes_tensor_fields_as_lists(client: httpx.AsyncClient) -> None:
    r = await client.post("/tensors", json={"pixels": [[1, 1, 1, 1]], "name": "x"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["sums"] == [4.0]
    bad = await client.post("/tensors", json={"pixels": [1, 2], "name": "x"}, headers=AUTH)
    assert bad.status_code == 422 and "it takes shape [-1, 4]" in bad.json()["error"]["errors"][0]["msg"]
