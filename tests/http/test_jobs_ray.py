"""Jobs on a real local Ray: the Python, HTTP and CLI paths, and the jobs' load scaling the
graph's first node (Serve's autoscaling sees the requests the job worker sends)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import dagserve
from dagserve.cli.main import main
from tests import job_graphs
from tests.background_server import BackgroundServer

pytestmark = [pytest.mark.ray, pytest.mark.http, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def served(shared_ray: None) -> Iterator[tuple[str, dagserve.App]]:
    app = dagserve.deploy(job_graphs.both, backend="ray")
    with BackgroundServer(app.asgi()) as url:
        yield url, app
    app.shutdown()


def finished(client: httpx.Client, location: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        record = client.get(location).json()
        if record["status"] not in ("queued", "running"):
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.05)


def test_python_path_on_ray(served: tuple[str, dagserve.App]) -> None:
    _, app = served
    job = app.submit({"n": 5}, graph="work")
    assert job.result(timeout=60) == {"n": 10}
    with pytest.raises(dagserve.NodeError, match="n must not be -1") as info:
        app.submit({"n": -1}, graph="work").result(timeout=60)
    assert info.value.node == "double"
    assert app.submit({"n": 3}, graph="stream").result(timeout=60) == [0, 1, 2]
    assert app.status().jobs is not None


def test_http_path_on_ray(served: tuple[str, dagserve.App]) -> None:
    url, app = served
    with httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/work/jobs", json={"n": 7})
        assert r.status_code == 202
        assert finished(client, r.headers["location"])["result"] == client.post("/work", json={"n": 7}).json()
        failed = finished(client, client.post("/work/jobs", json={"n": -1}).headers["location"])
        assert failed["error"]["type"] == "ValueError" and failed["error"]["node"] == "double"
        slow = client.post("/work/jobs", json={"n": 1, "sleep": 60}).headers["location"]
        deadline = time.monotonic() + 60
        while client.get(slow).json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.delete(slow).json()["status"] == "cancelled"
        deadline = time.monotonic() + 60
        while app.graphs["work"].in_flight:  # the call in the Ray replica was cancelled
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_cli_path_on_ray(served: tuple[str, dagserve.App]) -> None:
    url, app = served
    job = app.submit({"n": 2}, graph="work")
    job.result(timeout=60)
    runner = CliRunner()
    listed = runner.invoke(main, ["jobs", "list", "--url", url, "--graph", "work", "--json"])
    assert listed.exit_code == 0 and job.id in [j["id"] for j in json.loads(listed.output)["jobs"]]
    shown = runner.invoke(main, ["jobs", "show", job.id, "--url", url])
    assert shown.exit_code == 0 and json.loads(shown.output)["result"] == {"n": 4}


def scales_up_with_jobs(app: dagserve.App, node: str, jobs: int, sleep: float) -> None:
    """``node`` runs 1 replica; once ``jobs`` jobs are queued it runs 2 (within 120 s)."""
    assert app.status().nodes[node].running_replicas == 1
    submitted = [app.submit({"n": i, "sleep": sleep}) for i in range(jobs)]
    deadline = time.monotonic() + 120
    while app.status().nodes[node].running_replicas < 2:
        assert time.monotonic() < deadline, f"the queued jobs did not scale {node!r} up"
        time.sleep(0.5)
    for job in submitted:
        job.cancel()


def test_queued_jobs_scale_up_the_first_node(shared_ray: None) -> None:
    """1-2 replicas taking 2 requests each: the worker runs up to 2 jobs at once (half of 2 x 2),
    1 ongoing request per replica is the target, so a queue of jobs brings the second replica."""
    with dagserve.deploy(job_graphs.scaled, backend="ray") as app:
        scales_up_with_jobs(app, "first", 40, 0.5)


def test_the_queue_depth_policy_scales_the_first_node(shared_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One job at a time (so requests alone would never ask for a second replica) and 20 queued:
    the policy (dagserve.jobs.autoscale), reading the SQLite store from Serve's controller, wants
    ceil(20 / 5) replicas, at most 2."""
    db = tmp_path / "jobs.sqlite3"
    monkeypatch.setenv("DAGSERVE_TEST_QUEUE_DB", str(db))
    with dagserve.deploy(job_graphs.queue_scaled(), backend="ray", jobs_store=db,
                         jobs=dagserve.JobSettings(concurrency=1)) as app:
        scales_up_with_jobs(app, "deep", 20, 1.0)


def test_the_queue_depth_policy_wants_replicas_for_the_jobs(tmp_path: Path) -> None:
    from dagserve.jobs.autoscale import QueueDepthPolicy

    with dagserve.deploy(job_graphs.work, backend="local", jobs_store=tmp_path / "q.sqlite3",
                         jobs=dagserve.JobSettings(concurrency=1)) as app:
        for i in range(7):
            app.submit({"n": i, "sleep": 30})
        policy = QueueDepthPolicy(str(tmp_path / "q.sqlite3"), "work", jobs_per_replica=3)
        assert policy.jobs() == 7  # 6 queued and 1 running
        assert QueueDepthPolicy(str(tmp_path / "missing" / "no.sqlite3"), "work").jobs() == 0
        for job in app.jobs():
            job.cancel()
