"""The job routes end to end (local backend): real uvicorn on 127.0.0.1, real HTTP clients."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import dagserve
from benchmarks.redis_server import RedisServer
from tests import job_graphs
from tests.background_server import BackgroundServer

pytestmark = pytest.mark.http

TOKEN = "jobs-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def wait_for(client: httpx.Client, location: str, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """The job's record once it finished."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = client.get(location).json()
        if record["status"] in ("succeeded", "failed", "cancelled"):
            return record
        assert time.monotonic() < deadline, f"job still {record['status']} after {timeout_s} s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[httpx.Client, dagserve.App]]:
    app = dagserve.deploy(job_graphs.both, backend="local")
    with BackgroundServer(app.asgi(token=TOKEN)) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        yield client, app
    app.shutdown()


@pytest.fixture(scope="module")
def single() -> Iterator[httpx.Client]:
    app = dagserve.deploy(job_graphs.work, backend="local")
    with BackgroundServer(app.asgi()) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client
    app.shutdown()


def test_submit_answers_202_with_location_and_the_result_is_the_graph_routes_answer(served: tuple[httpx.Client, Any]) -> None:
    client, _ = served
    r = client.post("/work/jobs", json={"n": 21})
    assert r.status_code == 202
    body = r.json()
    assert body == {"id": body["id"], "status": "queued"} and r.headers["location"] == f"/-/jobs/{body['id']}"
    assert len(base64.urlsafe_b64decode(body["id"] + "==")) * 8 >= 128  # not guessable
    record = wait_for(client, r.headers["location"])
    assert record["result"] == client.post("/work", json={"n": 21}).json() == {"n": 42}
    assert record["graph"] == "work" and record["attempts"] == 1
    assert record["created"] <= record["started"] <= record["finished"]


def test_one_graph_served_takes_post_jobs_too(single: httpx.Client) -> None:
    for path in ("/jobs", "/work/jobs"):
        r = single.post(path, json={"n": 1})
        assert r.status_code == 202
        assert wait_for(single, r.headers["location"])["result"] == {"n": 2}


def test_a_failed_job_has_the_graph_routes_error_shape(served: tuple[httpx.Client, Any]) -> None:
    client, _ = served
    r = client.post("/work/jobs", json={"n": -1})
    record = wait_for(client, r.headers["location"])
    direct = client.post("/work", json={"n": -1}).json()["error"]
    assert record["status"] == "failed" and "result" not in record
    error = record["error"]
    assert {k: error[k] for k in ("type", "message", "status", "node")} == {k: direct[k] for k in ("type", "message", "status", "node")}
    assert error["type"] == "ValueError" and error["node"] == "double" and error["request_id"] == r.json()["id"]


def test_a_streaming_graphs_job_keeps_its_items_as_a_list(served: tuple[httpx.Client, Any]) -> None:
    client, _ = served
    r = client.post("/stream/jobs", json={"n": 4})
    assert wait_for(client, r.headers["location"])["result"] == [0, 1, 2, 3]
    assert client.post("/stream", json={"n": 4}, headers={"accept": "application/json"}).json() == [0, 1, 2, 3]


def test_an_idempotency_key_returns_the_first_job(served: tuple[httpx.Client, Any]) -> None:
    client, _ = served
    first = client.post("/work/jobs", json={"n": 5}, headers={"idempotency-key": "order-17"})
    again = client.post("/work/jobs", json={"n": 6}, headers={"idempotency-key": "order-17"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert wait_for(client, first.headers["location"])["result"] == {"n": 10}


def test_job_routes_take_the_graph_token(served: tuple[httpx.Client, Any]) -> None:
    client, _ = served
    job_id = client.post("/work/jobs", json={"n": 1}).json()["id"]
    bare = httpx.Client(base_url=str(client.base_url), timeout=10)
    for method, path in [("POST", "/work/jobs"), ("GET", f"/-/jobs/{job_id}"), ("DELETE", f"/-/jobs/{job_id}"), ("GET", "/-/jobs")]:
        r = bare.request(method, path, json={"n": 1} if method == "POST" else None)
        assert r.status_code == 401 and r.json()["error"]["type"] == "Unauthorized", (method, path)
    bare.close()


def test_cancel_a_running_job_stops_its_graph(served: tuple[httpx.Client, dagserve.App]) -> None:
    client, app = served
    r = client.post("/work/jobs", json={"n": 1, "sleep": 60})
    location = r.headers["location"]
    deadline = time.monotonic() + 20
    while client.get(location).json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cancelled = client.delete(location)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"]["type"] == "JobCancelledError"
    deadline = time.monotonic() + 20
    while app.graphs["work"].in_flight:  # the graph's run was cancelled, not left running
        assert time.monotonic() < deadline
        time.sleep(0.02)
    again = client.delete(location)
    assert again.status_code == 409 and again.json()["error"]["type"] == "JobFinished"
    missing = client.get("/-/jobs/not-a-job")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "JobNotFoundError"


def test_list_filters_and_pages(served: tuple[httpx.Client, Any]) -> None:
    client, _ = served
    ids = [client.post("/stream/jobs", json={"n": 1}).json()["id"] for _ in range(5)]
    for job_id in ids:
        wait_for(client, f"/-/jobs/{job_id}")
    listed = client.get("/-/jobs", params={"graph": "stream", "status": "succeeded"}).json()["jobs"]
    assert [j["id"] for j in listed][-5:] == ids and all("result" not in j for j in listed)
    seen: list[str] = []
    page = client.get("/-/jobs", params={"graph": "stream", "limit": 2}).json()
    while True:
        seen += [j["id"] for j in page["jobs"]]
        if page["next"] is None:
            break
        page = client.get("/-/jobs", params={"graph": "stream", "limit": 2, "after": page["next"]}).json()
    assert seen[-5:] == ids and len(seen) == len(set(seen))
    for query, word in [({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"), ({"status": "done"}, "status")]:
        r = client.get("/-/jobs", params=query)
        assert r.status_code == 400 and word in r.json()["error"]["message"]


def test_bad_submissions_are_refused_before_they_are_stored(served: tuple[httpx.Client, Any]) -> None:
    client, _ = served
    before = len(client.get("/-/jobs", params={"limit": 1000}).json()["jobs"])
    r = client.post("/work/jobs", content=b'{"n": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "InvalidJSON"
    r = client.post("/work/jobs", content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/work/jobs", content=b"[" + b"0," * 6_000_000 + b"0]", headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert len(client.get("/-/jobs", params={"limit": 1000}).json()["jobs"]) == before


def test_location_includes_the_mount_path() -> None:
    app = dagserve.deploy(job_graphs.work, backend="local")
    web = Starlette(routes=[Mount("/ml", app=app.asgi())])
    try:
        with BackgroundServer(web) as url, httpx.Client(base_url=url, timeout=30) as client:
            r = client.post("/ml/jobs", json={"n": 3})
            assert r.headers["location"].startswith("/ml/-/jobs/")
            assert wait_for(client, r.headers["location"])["result"] == {"n": 6}
    finally:
        app.shutdown()


def test_a_burst_of_jobs_never_makes_the_graphs_requests_answer_503() -> None:
    """The node takes 2 calls and queues 2: 3 interactive requests at a time fit only if the jobs
    (60 queued) keep to what interactive requests leave."""
    app = dagserve.deploy(job_graphs.tight, backend="local")
    try:
        with BackgroundServer(app.asgi()) as url:

            async def run() -> tuple[list[int], list[str]]:
                async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                    submitted = await asyncio.gather(*(client.post("/jobs", json={"n": i, "sleep": 0.02}) for i in range(60)))
                    assert {r.status_code for r in submitted} == {202}
                    statuses: list[int] = []
                    for _ in range(15):
                        answers = await asyncio.gather(*(client.post("/", json={"n": i}) for i in range(3)))
                        statuses += [a.status_code for a in answers]
                    done: list[str] = []
                    for r in submitted:
                        while True:
                            record = (await client.get(r.headers["location"])).json()
                            if record["status"] not in ("queued", "running"):
                                done.append(record["status"])
                                break
                            await asyncio.sleep(0.05)
                    return statuses, done

            statuses, done = asyncio.run(run())
        assert statuses == [200] * 45
        assert done == ["succeeded"] * 60
    finally:
        app.shutdown()


def test_a_store_that_fails_answers_503_and_stores_nothing(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    url = redis.start()
    app = dagserve.deploy(job_graphs.work, backend="local", jobs_store=url)
    try:
        with BackgroundServer(app.asgi()) as base, httpx.Client(base_url=base, timeout=30) as client:
            assert client.post("/jobs", json={"n": 1}).status_code == 202
            redis.stop()  # the store goes away
            r = client.post("/jobs", json={"n": 2})
            assert r.status_code == 503 and r.headers["retry-after"]
            error = r.json()["error"]
            assert error["type"] == "JobStoreError" and "redis://127.0.0.1" in error["message"]
            assert "Traceback" not in r.text
            with pytest.raises(dagserve.JobStoreError, match="Retry shortly"):
                app.submit({"n": 3})
    finally:
        redis.stop()
        app.shutdown()
