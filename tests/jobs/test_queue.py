"""The worker (dagserve/jobs/queue.py) with a stand-in for the App: what it runs, how many at
once, cancelling, overload, stopping, leases; and the Job handle."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dagserve._errors import (
    JobCancelledError,
    JobNotFoundError,
    NodeError,
    OverloadedError,
    RequestError,
)
from dagserve.jobs import Job, JobQueue, JobSettings, open_store
from dagserve.jobs.error_record import error_record, rebuild_error
from dagserve.runtime.executor import RequestContext


class Graph:
    """Runs jobs: records each call; ``{"wait": True}`` blocks until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str, RequestContext]] = []
        self.release = asyncio.Event()
        self.running = 0
        self.most = 0
        self.overloaded = 0

    async def __call__(self, payload: Any, graph: str, ctx: RequestContext) -> Any:
        self.calls.append((payload, graph, ctx))
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if payload.get("overload") and self.overloaded < payload["overload"]:
                self.overloaded += 1
                raise OverloadedError("full", node="n")
            if payload.get("wait"):
                await self.release.wait()
            if payload.get("fail"):
                raise NodeError("Node 'n' raised ValueError: bad", node="n", error_type="ValueError")
            return {"echo": payload}
        finally:
            self.running -= 1


async def started(graph: Graph) -> None:
    """Wait until the graph runs a job (bounded)."""
    for _ in range(500):
        if graph.running:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no job started within 5 s")


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[JobQueue, Graph]]:
    graph = Graph()
    queue = JobQueue(open_store(tmp_path / "q.sqlite3"), graph, graphs=["g"], settings=JobSettings(concurrency=2, lease_s=0.3),
                     encode=encode, capacity=10)
    queue.start(asyncio.get_running_loop())
    yield queue, graph
    graph.release.set()
    await queue.stop()


async def test_a_job_runs_once_with_the_job_door_and_its_id(setup: tuple[JobQueue, Graph]) -> None:
    queue, graph = setup
    record, created = await queue.asubmit("g", '{"x": 1}')
    assert created
    assert await Job(record.id, queue).aresult(timeout=10) == {"echo": {"x": 1}}
    (payload, name, ctx), = graph.calls
    assert (payload, name, ctx.protocol, ctx.request_id) == ({"x": 1}, "g", "job", record.id)
    assert queue.counters.outcomes[("g", "succeeded")] == 1


async def test_at_most_concurrency_jobs_at_once(setup: tuple[JobQueue, Graph]) -> None:
    queue, graph = setup
    records = [(await queue.asubmit("g", '{"wait": true}'))[0] for _ in range(5)]
    for _ in range(200):
        if graph.running == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert graph.running == 2 and graph.most == 2
    graph.release.set()
    for r in records:
        await Job(r.id, queue).aresult(timeout=10)
    assert graph.most == 2


async def test_no_new_job_while_interactive_requests_fill_the_graph(tmp_path: Path) -> None:
    graph, busy = Graph(), [10]
    queue = JobQueue(open_store(None), graph, graphs=["g"], settings=JobSettings(), encode=encode, capacity=10,
                     interactive=lambda: busy[0])
    queue.start(asyncio.get_running_loop())
    try:
        assert queue.concurrency == 5 and queue.room() == 0
        record, _ = await queue.asubmit("g", "{}")
        await asyncio.sleep(0.3)
        assert graph.calls == []  # interactive requests take the whole capacity: the job waits
        busy[0] = 7
        assert queue.room() == 3
        assert await Job(record.id, queue).aresult(timeout=10) == {"echo": {}}
    finally:
        await queue.stop()


async def test_a_failed_job_keeps_a_typed_error(setup: tuple[JobQueue, Graph]) -> None:
    queue, _ = setup
    record, _ = await queue.asubmit("g", '{"fail": true}')
    with pytest.raises(NodeError, match="bad") as info:
        await Job(record.id, queue).aresult(timeout=10)
    assert info.value.node == "n" and info.value.error_type == "ValueError"
    stored = await queue.aget(record.id)
    assert stored is not None and stored.status == "failed" and stored.attempts == 1


async def test_cancelling_a_running_job_cancels_its_run(setup: tuple[JobQueue, Graph]) -> None:
    queue, graph = setup
    record, _ = await queue.asubmit("g", '{"wait": true}')
    await started(graph)
    cancelled = await queue.acancel(record.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    for _ in range(200):
        if not graph.running:
            break
        await asyncio.sleep(0.01)
    assert graph.running == 0  # the graph's work stopped
    with pytest.raises(JobCancelledError):
        await Job(record.id, queue).aresult(timeout=10)


async def test_an_overloaded_graph_sends_the_job_back_uncounted(setup: tuple[JobQueue, Graph]) -> None:
    queue, graph = setup
    record, _ = await queue.asubmit("g", '{"overload": 2}')
    assert await Job(record.id, queue).aresult(timeout=10) == {"echo": {"overload": 2}}
    stored = await queue.aget(record.id)
    assert stored is not None and stored.attempts == 1 and len(graph.calls) == 3


async def test_stopping_sends_running_jobs_back_to_the_queue(tmp_path: Path) -> None:
    graph = Graph()
    store_path = tmp_path / "q.sqlite3"
    queue = JobQueue(open_store(store_path), graph, graphs=["g"], settings=JobSettings(), encode=encode, capacity=10)
    queue.start(asyncio.get_running_loop())
    record, _ = await queue.asubmit("g", '{"wait": true}')
    await started(graph)
    await queue.stop()
    store = open_store(store_path)
    stored = store.get(record.id)
    assert stored is not None and stored.status == "queued" and stored.attempts == 0
    store.close()


async def test_a_job_taken_over_elsewhere_stops_here(setup: tuple[JobQueue, Graph]) -> None:
    queue, graph = setup
    record, _ = await queue.asubmit("g", '{"wait": true}')
    await started(graph)
    # Another server's recovery took it (as if this one's lease had lapsed).
    queue.store.recover(time.time(), 3, time.time() + 100, {}, everything=True)
    for _ in range(500):  # the heartbeat (every lease_s / 3) stops the old run; the job runs again
        if len(graph.calls) == 2 and graph.running == 1:
            break
        await asyncio.sleep(0.01)
    assert len(graph.calls) == 2 and graph.running == 1
    stored = await queue.aget(record.id)
    assert stored is not None and stored.attempts == 2 and stored.status == "running"


async def test_submissions_are_checked(setup: tuple[JobQueue, Graph]) -> None:
    queue, _ = setup
    with pytest.raises(RequestError, match="no graph 'h'"):
        await queue.asubmit("h", "{}")
    with pytest.raises(RequestError, match="1 to 255"):
        await queue.asubmit("g", "{}", "k" * 300)
    with pytest.raises(RequestError, match="no job status 'done'"):
        await queue.alist(status="done")


async def test_job_handle_from_another_thread_and_not_found(setup: tuple[JobQueue, Graph]) -> None:
    queue, graph = setup
    record, _ = await queue.asubmit("g", '{"wait": true}')
    job = Job(record.id, queue)
    assert await asyncio.to_thread(job.status) in ("queued", "running")
    with pytest.raises(TimeoutError, match="did not finish within"):
        await asyncio.to_thread(job.result, 0.05)
    graph.release.set()
    assert await asyncio.to_thread(job.result, 10) == {"echo": {"wait": True}}
    with pytest.raises(JobNotFoundError):
        await asyncio.to_thread(Job("nope", queue).status)


def test_settings_are_validated() -> None:
    from dagserve._errors import OptionsError

    with pytest.raises(OptionsError, match="max_attempts=0"):
        JobSettings(max_attempts=0)
    with pytest.raises(OptionsError, match="ttl_s=-1"):
        JobSettings(ttl_s=-1)


@pytest.mark.parametrize(
    "exc",
    [
        NodeError("Node 'a' raised KeyError: 'x'", node="a", error_type="KeyError"),
        OverloadedError("full", node="b", retry_after_s=2.0),
        JobCancelledError("cancelled"),
    ],
)
def test_error_records_rebuild_the_same_typed_error(exc: Exception) -> None:
    record = json.loads(json.dumps(error_record(exc)))  # through JSON, as stored
    again = rebuild_error(record)
    assert type(again) is type(exc) and str(again) == str(exc)
    assert getattr(again, "node", None) == getattr(exc, "node", None)
    assert again.status_code == exc.status_code  # type: ignore[attr-defined]


def test_a_foreign_exception_names_only_its_type() -> None:
    record = error_record(KeyError("secret detail"))
    assert "secret" not in json.dumps(record) and "KeyError" in record["message"]
    assert rebuild_error(record).status_code == 500


async def test_a_saturated_loop_with_interactive_requests_starts_one_job_at_a_time() -> None:
    graph = Graph()
    queue = JobQueue(open_store(None), graph, graphs=["g"], settings=JobSettings(concurrency=4), encode=encode, capacity=10)
    queue.busy = True  # as _watch_loop sets it when timers run late or a CPU is full
    assert queue.room() == 4  # busy with jobs alone: they go on at full concurrency
    queue.contended = True  # other requests came meanwhile
    assert queue.room() == 1  # busy with requests: one job at a time, so that jobs still progress
    queue._last_start = time.monotonic()
    assert queue.room() == 0  # ... with a pause between two
    queue.busy = False
    assert queue.room() == 4
    queue.close()


async def test_the_loop_watch_sees_other_requests_come() -> None:
    graph, begun = Graph(), [0]
    queue = JobQueue(open_store(None), graph, graphs=["g"], settings=JobSettings(), encode=encode, capacity=10)
    queue.loads.append(lambda: begun[0])
    queue.start(asyncio.get_running_loop())
    try:
        await asyncio.sleep(0.2)
        assert not queue.contended
        for _ in range(100):  # requests keep coming
            begun[0] += 1
            await asyncio.sleep(0.01)
            if queue.contended:
                break
        assert queue.contended
    finally:
        await queue.stop()
