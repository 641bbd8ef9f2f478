"""``app.submit`` / ``app.job`` / ``app.jobs`` and ``dagserve.Job`` (local backend; Ray in
tests/http/test_jobs_ray.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import dagserve
from tests import job_graphs


def test_submit_result_status_and_listing() -> None:
    with dagserve.deploy(job_graphs.work, backend="local") as app:
        job = app.submit({"n": 4})
        assert isinstance(job, dagserve.Job) and len(job.id) >= 22
        assert job.result(timeout=30) == {"n": 8}
        assert job.status() == "succeeded"
        failed = app.submit({"n": -1})
        with pytest.raises(dagserve.NodeError, match="n must not be -1") as info:
            failed.result(timeout=30)
        assert info.value.node == "double" and info.value.error_type == "ValueError"
        assert [j.id for j in app.jobs()] == [job.id, failed.id]
        assert [j.id for j in app.jobs(status="failed")] == [failed.id]
        assert app.job(job.id).result() == {"n": 8}
        with pytest.raises(dagserve.JobNotFoundError):
            app.job("nope")
        stats = app.status().jobs
        assert stats is not None and stats["queued"] == 0 and stats["store"] == ":memory:"
        assert app.status().to_dict()["jobs"] == stats


def test_keys_cancel_and_several_graphs() -> None:
    with dagserve.deploy(job_graphs.both, backend="local") as app:
        first = app.submit({"n": 1}, graph="work", key="k")
        assert app.submit({"n": 2}, graph="work", key="k").id == first.id
        assert app.submit({"n": 3}, graph="stream").result(timeout=30) == [0, 1, 2]
        slow = app.submit({"n": 1, "sleep": 60}, graph="work")
        deadline = time.monotonic() + 20
        while slow.status() != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert slow.cancel()
        with pytest.raises(dagserve.JobCancelledError):
            slow.result(timeout=30)
        assert first.result(timeout=30) == {"n": 2}
        assert not first.cancel()  # finished already: it stays succeeded
        with pytest.raises(dagserve.NodeNotFoundError, match="no graph 'nope'"):
            app.submit({}, graph="nope")


async def test_aresult_and_submit_inside_an_event_loop() -> None:
    app = dagserve.deploy(job_graphs.work, backend="local")
    try:
        jobs = [app.submit({"n": i}) for i in range(5)]
        assert await asyncio.gather(*(j.aresult(timeout=30) for j in jobs)) == [{"n": 2 * i} for i in range(5)]
    finally:
        app.shutdown()


def test_a_durable_store_keeps_jobs_for_the_next_app(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    settings = dagserve.JobSettings(concurrency=1)
    with dagserve.deploy(job_graphs.work, backend="local", jobs_store=db, jobs=settings) as app:
        done = app.submit({"n": 1})
        assert done.result(timeout=30) == {"n": 2}
        held = app.submit({"n": 2, "sleep": 60})
        waiting = app.submit({"n": 3})
        deadline = time.monotonic() + 20
        while held.status() != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
    # Shut down while one ran and one waited: both run in the next App on the same file.
    with dagserve.deploy(job_graphs.work, backend="local", jobs_store=str(db)) as app:
        again = app.job(held.id)
        assert app.job(waiting.id).result(timeout=30) == {"n": 6}
        assert again.status() in ("queued", "running")
        assert again.cancel()
        assert app.job(done.id).result() == {"n": 2}
        assert app.job(waiting.id).record().attempts == 1


def test_payloads_must_be_json() -> None:
    with dagserve.deploy(job_graphs.work, backend="local") as app, pytest.raises(dagserve.RequestError, match="holds a value of type object"):
        app.submit({"n": object()})


def test_an_unknown_store_is_refused() -> None:
    with dagserve.deploy(job_graphs.work, backend="local", jobs_store="kafka://x") as app, pytest.raises(
        dagserve.OptionsError, match="kafka://x"
    ):
        app.submit({"n": 1})


def test_finished_jobs_are_deleted_after_their_ttl() -> None:
    settings = dagserve.JobSettings(ttl_s=0.3, lease_s=0.3)  # the heartbeat (every lease_s / 3) purges
    with dagserve.deploy(job_graphs.work, backend="local", jobs=settings) as app:
        job = app.submit({"n": 1})
        assert job.result(timeout=30) == {"n": 2}
        deadline = time.monotonic() + 30
        while True:
            try:
                job.status()
            except dagserve.JobNotFoundError:
                break
            assert time.monotonic() < deadline, "the finished job was not deleted after its TTL"
            time.sleep(0.05)
        with pytest.raises(dagserve.JobNotFoundError):
            app.job(job.id)
