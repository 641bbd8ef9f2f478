"""Composition on a real local Ray (issue 18; conftest.py's shared one), one App for the module: ``map`` under
load with batching (each item a call to the node's deployment), ``optional`` skipping a failing
node, node-chosen statuses through the ingress, and an autoscaling config with Serve's own fields
deployed. The logic is tested on the local backend (tests/runtime/test_composition.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.exceptions import HTTPException

import dagserve
from dagserve import NodeError, OptionsError
from dagserve.backends.ray.serve_options import deployment_options
from dagserve.runtime.executor import RequestContext

ray_test = pytest.mark.ray

#: Serve's own autoscaling fields, as a Serve config would spell them.
SERVE_AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 5,
    "look_back_period_s": 15.0,
    "aggregation_function": "max",
    "upscaling_factor": 1.5,
    "downscale_to_zero_delay_s": 120.0,
}


@dagserve.node
def detect(n: int) -> list[int]:
    return list(range(n))


@dagserve.node(max_batch_size=8, batch_wait_timeout_s=0.05)
async def classify(crops: list[int]) -> list[dict[str, int]]:
    await asyncio.sleep(0.05)  # a batch holds the model a while, so the next one fills up
    return [{"crop": c, "batch": len(crops)} for c in crops]


@dagserve.node
def fails_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"{x} is bad")
    return x


@dagserve.node(autoscaling=SERVE_AUTOSCALING)
def gate(x: int) -> int:
    if x < 0:
        raise dagserve.HTTPError(403, f"{x} is not allowed.")
    if x == 0:
        raise HTTPException(418, "I'm a teapot")
    return x


@dagserve.node(timeout_s=0.2)
async def too_slow(x: int) -> int:
    await asyncio.sleep(5)
    return x


def graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        crops = detect(inp["n"])
        out = {
            "labels": classify.map(crops),
            "checked": dagserve.map(fails_at, crops, inp["bad"]),
            "gate": gate(inp["x"]),
            "soft": dagserve.optional(fails_at(inp["x"], 1), default="skipped"),
            "slow": dagserve.optional(too_slow(inp["x"]), on_error=lambda e: type(e).__name__),
        }
    return dagserve.Graph(out, name="composition_ray")


@pytest.fixture(scope="module")
def app(shared_ray: None) -> Iterator[dagserve.App]:
    with dagserve.deploy(graph(), backend="ray", ready_timeout_s=180) as app:
        yield app


# -- without Ray ----------------------------------------------------------------------------------


def test_serve_refuses_what_its_autoscaling_model_refuses_naming_the_node() -> None:
    @dagserve.node(autoscaling={"policy": {"policy_function": 42}})
    def odd(x: int) -> int:
        return x

    with dagserve.Input() as inp:
        spec = dagserve.compile(dagserve.Graph(odd(inp))).deployments[0]
    with pytest.raises(OptionsError, match=r"Invalid autoscaling for node 'odd': Ray Serve refuses it"):
        deployment_options(spec)


def test_autoscaling_knows_every_field_of_serves_model() -> None:
    from ray.serve.config import AutoscalingConfig

    assert set(AutoscalingConfig.model_fields) <= set(dagserve.Autoscaling.model_fields)


# -- on Ray ---------------------------------------------------------------------------------------


@ray_test
async def test_map_under_load_calls_the_deployment_per_item_in_batches(app: dagserve.App) -> None:
    sizes = [5, 9, 0, 12, 7, 3, 8, 11]
    outs = await asyncio.gather(*(app.acall({"n": n, "bad": -1, "x": 2}) for n in sizes))
    for n, out in zip(sizes, outs, strict=True):
        assert [r["crop"] for r in out["labels"]] == list(range(n))
        assert out["checked"] == list(range(n))
        assert (out["gate"], out["soft"]) == (2, 2)
    counts = (await asyncio.to_thread(app.backend.batch_sizes))["classify"]  # read off the event loop
    assert sum(size * k for size, k in counts.items()) == sum(sizes)  # one call per item
    assert max(counts) > 1  # items of concurrent maps went together


@ray_test
async def test_a_failing_item_names_the_node_and_its_index_on_ray(app: dagserve.App) -> None:
    with pytest.raises(NodeError, match=r"Node 'fails_at' raised ValueError: 3 is bad.*\(at item 3 of 6") as info:
        await app.acall({"n": 6, "bad": 3, "x": 2})
    assert info.value.node == "fails_at"


@ray_test
async def test_optional_skips_a_failing_or_timed_out_node_on_ray(app: dagserve.App) -> None:
    ctx = RequestContext()
    out = await app.acall({"n": 1, "bad": -1, "x": 1}, context=ctx)
    assert (out["soft"], out["slow"]) == ("skipped", "RequestTimeoutError")
    assert sorted(ctx.skipped) == ["fails_at#2", "too_slow"]


@ray_test
async def test_node_chosen_statuses_through_the_ingress(app: dagserve.App) -> None:
    transport = httpx.ASGITransport(app=app.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post("/", json={"n": 1, "bad": -1, "x": -5})
        assert r.status_code == 403
        error: dict[str, Any] = r.json()["error"]
        assert (error["type"], error["message"], error["node"]) == ("HTTPError", "-5 is not allowed.", "gate")
        r = await client.post("/", json={"n": 1, "bad": -1, "x": 0})
        assert (r.status_code, r.json()["error"]["type"], r.json()["error"]["node"]) == (418, "HTTPException", "gate")
        r = await client.post("/", json={"n": 1, "bad": -1, "x": 1})
        assert r.status_code == 200 and r.headers["x-dagserve-skipped"] == "fails_at#2, too_slow"


@ray_test
def test_serve_autoscaling_fields_reach_the_deployment(app: dagserve.App) -> None:
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    config = details["applications"]["composition_ray"]["deployments"]["gate"]["deployment_config"]["autoscaling_config"]
    for key, value in SERVE_AUTOSCALING.items():
        assert config[key] == value, key
