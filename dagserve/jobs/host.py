"""The jobs of one App: its queue, made and started when first used, and the Python face of it
(``app.submit``, ``app.job``, ``app.jobs``). Built from plain values and callables the App hands
over, so this package stays below the App (docs/architecture.md)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dagserve.jobs.job import Job
from dagserve.jobs.queue import JobQueue, JobRun
from dagserve.jobs.record import JobSettings
from dagserve._errors import OptionsError
from dagserve.jobs.store import JobStore

if TYPE_CHECKING:
    from dagserve.compiler.plan import Plan

__all__ = ["JobsHost", "job_capacity", "open_store"]

log = logging.getLogger("dagserve.jobs")

#: Requests at once assumed for a graph whose nodes all run inline (none declares a limit).
INLINE_CAPACITY = 16


def job_capacity(plan: Plan) -> int:
    """What the graph's nodes can take at once: the smallest node's replicas (at most) times the
    requests one replica takes (``max_ongoing_requests``)."""
    caps = [
        spec.options.effective_max_ongoing_requests * spec.options.replica_range()[1]
        for spec in plan.deployments
        if not spec.inline
    ]
    return min(caps) if caps else INLINE_CAPACITY


class JobsHost:
    """One App's jobs: the store at ``where`` (``None``: in memory), run by ``run`` on the loop
    ``home_loop(current)`` gives; ``in_flight()`` counts the App's requests running now."""

    def __init__(
        self,
        where: str | os.PathLike[str] | JobStore | None,
        settings: JobSettings,
        *,
        graphs: Sequence[str],
        capacity: int,
        run: JobRun,
        home_loop: Callable[[asyncio.AbstractEventLoop | None], asyncio.AbstractEventLoop],
        in_flight: Callable[[], int],
        encode: Callable[[Any], bytes],
    ) -> None:
        self.where = where
        self.settings = settings
        self._graphs = tuple(graphs)
        self._capacity = capacity
        self._run = run
        self._home_loop = home_loop
        self._in_flight = in_flight
        self._encode = encode
        self._queue: JobQueue | None = None
        self._lock = threading.Lock()

    def queue(self) -> JobQueue:
        """The queue, its store opened and its worker started on the App's loop (the running loop
        when called from one: where the App serves)."""
        with self._lock:
            queue = self._queue
            if queue is None or queue._closed:  # a server that served it stopped: open it again
                queue = self._queue = JobQueue(
                    open_store(self.where), self._run, graphs=self._graphs, settings=self.settings,
                    encode=self._encode, capacity=self._capacity,
                    interactive=lambda: max(0, self._in_flight() - len(queue._running)),  # type: ignore[union-attr]
                )
        if not queue.started:
            current = None
            with contextlib.suppress(RuntimeError):
                current = asyncio.get_running_loop()
            queue.start(self._home_loop(current))
        return queue

    # -- the Python face ---------------------------------------------------------------------------
    def submit(self, payload: Any, graph: str, key: str | None) -> Job:
        queue = self.queue()
        record, _ = queue.submit(graph, queue.encode_payload(payload), key)
        return Job(record.id, queue)

    def job(self, job_id: str) -> Job:
        job = Job(job_id, self.queue())
        job.record()  # raises JobNotFoundError
        return job

    def jobs(self, graph: str | None, status: str | None, limit: int, after: str | None) -> list[Job]:
        queue = self.queue()
        return [Job(r.id, queue) for r in queue.list_sync(graph, status, limit, after)]

    def opened(self) -> JobQueue | None:
        """The queue if it was used already and still runs (else ``None``: nothing is opened or started)."""
        queue = self._queue
        return queue if queue is not None and not queue._closed else None

    def stats(self, graph: str | None = None) -> dict[str, Any] | None:
        """The queue's figures, for ``graph`` or all its graphs (``None`` before it was first used)."""
        queue = self._queue
        if queue is None or queue._closed:
            return None
        return queue.stats(None if graph is None else [graph])

    def shutdown(self) -> None:
        """Stop the worker: jobs running here go back to the queue (or, when the loop is gone,
        are re-queued by the next server on the store)."""
        queue = self._queue
        if queue is None:
            return
        loop = queue._loop
        running = None
        with contextlib.suppress(RuntimeError):
            running = asyncio.get_running_loop()
        if loop is not None and loop.is_running() and loop is not running:
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(queue.stop(), loop).result(timeout=10)
                return
        queue.close()


def open_store(where: str | os.PathLike[str] | JobStore | None) -> JobStore:
    """The store at ``where``: ``None`` (in memory), a SQLite path, ``redis://HOST:PORT/DB``, or a store."""
    if isinstance(where, JobStore):
        return where
    if where is None:
        from dagserve.jobs.sqlite import SQLiteStore

        return SQLiteStore(":memory:")
    text = os.fspath(where)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from dagserve.jobs.redis import RedisStore

        return RedisStore(text)
    if "://" in text:
        raise OptionsError(
            f"jobs_store={text!r} is not a store dagserve knows: give a SQLite file path, "
            "redis://HOST:PORT/DB, or None (in memory)."
        )
    from dagserve.jobs.sqlite import SQLiteStore

    return SQLiteStore(text)
