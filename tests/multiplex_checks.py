"""Checks of multiplexed nodes (docs/multiplexing.md), run against Apps of
``multiplex_graphs`` on each backend, from Python and over real HTTP.

Each returns nothing and asserts on counts (loads, evictions, releases), never on time.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from dagserve import ModelIdError
from dagserve.runtime.multiplex import MODEL_ID_HEADER

from .background_server import BackgroundServer
from .multiplex_graphs import events


def models(app: Any, node: str = "Tenants", settle_s: float = 0.0) -> dict[str, Any]:
    """The node's ``status().nodes[node].models`` (after ``settle_s``: Ray replicas report
    their counters about once a second)."""
    if settle_s:
        time.sleep(settle_s)
    return dict(app.status().nodes[node].models)


def burst(app: Any, payloads: list[dict[str, Any]]) -> list[Any]:
    async def run() -> list[Any]:
        return await asyncio.gather(*(app.acall(p) for p in payloads))

    return asyncio.run(run())


def check_routing_to_holders(app: Any, log: str, settle_s: float = 0.0, exact: bool = True) -> None:
    """Four ids over replicas of 2 slots: ``exact`` (2 replicas, nothing loaded before), each
    replica takes two (fewest models first); then a burst of 80 calls over the ids held goes to
    holders only: no load, no eviction."""
    for t in "abcd":
        assert app.call({"x": 1, "tenant": t})["model"] == t
    before = models(app, settle_s=settle_s)
    if exact:
        assert before["loads"] == 4 and before["evictions"] == 0
        assert sorted(len(held) for held in before["replicas"].values()) == [2, 2]
    held = sorted({m for h in before["replicas"].values() for m in h})
    answers = burst(app, [{"x": i, "tenant": held[i % len(held)]} for i in range(80)])
    assert [a["answer"] for a in answers] == [f"{held[i % len(held)]}:{i}" for i in range(80)]
    after = models(app, settle_s=settle_s)
    assert (after["loads"], after["evictions"]) == (before["loads"], before["evictions"])
    assert after["hits"] >= before["hits"] + 80
    assert after["hit_ratio"] is not None and after["hit_ratio"] > 0.5


def check_one_load_for_concurrent_calls(app: Any, log: str) -> None:
    """Twenty calls at once for an id no replica holds: one load."""
    answers = burst(app, [{"x": i, "tenant": "fresh"} for i in range(20)])
    assert {a["model"] for a in answers} == {"fresh"}
    assert Counter(events(log))["load fresh"] == 1


def check_lru_bound_and_release(app: Any, log: str, settle_s: float = 0.0) -> None:
    """More ids than slots: no replica holds more than its bound, and every evicted model was
    released (its close()) once."""
    for t in ("p", "q", "r", "s", "t"):
        app.call({"x": 0, "tenant": t})
    state = models(app, settle_s=settle_s)
    assert all(len(held) <= state["max_models_per_replica"] for held in state["replicas"].values())
    seen = Counter(events(log))
    loads = {e.split(" ", 1)[1]: n for e, n in seen.items() if e.startswith("load ")}
    closes = {e.split(" ", 1)[1]: n for e, n in seen.items() if e.startswith("close ")}
    assert sum(loads.values()) == state["loads"]
    assert sum(closes.values()) == state["evictions"] > 0
    holders = Counter(m for held in state["replicas"].values() for m in held)
    for mid, n in loads.items():  # every load was released by an eviction, or is still held
        assert n - closes.get(mid, 0) == holders[mid], mid


def check_failed_and_hanging_loads(app: Any, log: str) -> None:
    """optional(...) covers a load that fails and one that hangs past the node's timeout_s; a
    failed load is not cached (the next call loads again)."""
    assert app.call({"x": 1, "tenant": "bad-1"}) == "skipped"
    assert app.call({"x": 1, "tenant": "bad-1"}) == "skipped"
    assert Counter(events(log))["load bad-1"] == 2
    assert app.call({"x": 1, "tenant": "hang-1"}) == "skipped"
    assert app.call({"x": 2, "tenant": "ok"})["answer"] == "ok:2"


def check_per_id_batches(app: Any) -> None:
    payloads = [{"x": f"{t}{i}", "tenant": t} for i in range(12) for t in ("a", "b", "c")]
    answers = burst(app, payloads)
    for p, a in zip(payloads, answers, strict=True):
        assert a["model"] == p["tenant"]
        assert p["x"] in a["batch"]
        assert all(item.startswith(a["model"]) for item in a["batch"])  # one id per batch
    assert max(len(a["batch"]) for a in answers) > 1, answers


def check_bad_model_id(app: Any) -> None:
    with pytest.raises(ModelIdError, match="Node 'Tenants' got the model id ''"):
        app.call({"x": 1, "tenant": ""})
    with pytest.raises(ModelIdError, match="300 characters long"):
        app.call({"x": 1, "tenant": "x" * 300})


def check_http(app: Any) -> None:
    """The payload's field, the header when the payload lacks it (the payload wins), a bad id is a
    422 naming the node, and /metrics has the node's model series."""
    with BackgroundServer(app.asgi()) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/", json={"x": 1, "tenant": "h1"})
        assert r.status_code == 200 and r.json()["model"] == "h1"
        r = client.post("/", json={"x": 2}, headers={MODEL_ID_HEADER: "h2"})
        assert r.status_code == 200 and r.json()["answer"] == "h2:2"
        r = client.post("/", json={"x": 3, "tenant": "h1"}, headers={MODEL_ID_HEADER: "h2"})
        assert r.json()["model"] == "h1"  # the payload wins
        r = client.post("/", json={"x": 4}, headers={MODEL_ID_HEADER: "x" * 257})
        assert r.status_code == 422
        body = r.json()["error"]
        assert body["node"] == "Tenants" and "257 characters long" in body["message"] and "Traceback" not in r.text
        r = client.post("/", json={"x": 4})
        assert r.status_code == 422 and r.json()["error"]["node"] == "Tenants"
        metrics = client.get("/metrics").text
        op = client.get("/openapi.json").json()["paths"]["/"]["post"]
        assert [p["name"] for p in op["parameters"]] == [MODEL_ID_HEADER]
    for name in ("dagserve_model_loads_total", "dagserve_model_hits_total", "dagserve_model_evictions_total"):
        assert f'{name}{{graph="tenants",node="Tenants"}}' in metrics
    assert 'dagserve_model_load_seconds_total{graph="tenants",node="Tenants"}' in metrics
