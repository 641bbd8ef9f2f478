"""The job queue of one process: submitting to a store, and the worker that runs queued jobs.

The worker lives on the event loop the App serves on. It takes queued jobs from the store
(``claim``) while it has room, runs each through ``run(payload, graph, ctx)`` (the App's own
request path, ``RequestContext(protocol="job")``), and records the outcome. Room is the smaller
of ``concurrency`` and what interactive requests leave of the graph's ``capacity``: jobs run
below interactive traffic and start no new work while it is high. A heartbeat renews the leases
of the running jobs (a job cancelled or taken over elsewhere is cancelled here), re-queues the
jobs of dead servers and deletes results past their time.

Every store call runs on the queue's own threads, never on the event loop. This module knows
nothing of the App or of HTTP.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dagserve._errors import (
    DagserveError,
    JobAttemptsExhaustedError,
    JobCancelledError,
    JobStoreError,
    OverloadedError,
    RequestError,
)
from dagserve.jobs.error_record import error_record
from dagserve.jobs.record import STATUSES, JobRecord, JobSettings, new_job_id
from dagserve.jobs.store import JobStore
from dagserve.runtime.executor import RequestContext

__all__ = ["RUN_SECONDS_BUCKETS", "JobQueue", "JobRun", "QueueCounters"]

log = logging.getLogger("dagserve.jobs")

T = TypeVar("T")
#: Runs one job's payload on its graph: ``(payload, graph, ctx) -> the graph's answer``.
JobRun = Callable[[Any, str, RequestContext], Awaitable[Any]]

#: How often an idle worker looks for jobs that other processes queued (its own wake it at once).
POLL_S = 0.5
#: How long the worker waits before it tries again after an overloaded graph sent a job back.
OVERLOAD_PAUSE_S = 0.2
#: How often the event loop's lateness is probed, and the smoothed lateness above which it counts
#: as saturated by interactive traffic (then jobs start one at a time).
LAG_PROBE_S = 0.05
BUSY_LAG_S = 0.005
#: ... or the CPU time the process uses per second of wall time above which it counts as saturated.
BUSY_CPU = 0.85
#: While saturated, at least this long between the starts of two jobs.
BUSY_GAP_S = 0.1
#: How often finished jobs past their time are deleted.
PURGE_EVERY_S = 60.0
#: Most jobs a listing returns at once.
MAX_LIST = 1000


#: Bounds (seconds) of the run-time histogram: jobs take from a second to hours.
RUN_SECONDS_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 10800.0)


@dataclass
class QueueCounters:
    """What this process's worker did, for the metrics: outcomes (``succeeded``, ``failed``,
    ``cancelled``, ``requeued``) and a histogram of run times per graph (per-bucket counts of
    :data:`RUN_SECONDS_BUCKETS`, then +Inf, then the sum)."""

    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)  # (graph, outcome) -> count
    run_seconds: dict[str, list[float]] = field(default_factory=dict)  # graph -> histogram
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, graph: str, outcome: str, seconds: float | None = None) -> None:
        with self.lock:
            self.outcomes[(graph, outcome)] = self.outcomes.get((graph, outcome), 0) + 1
            if seconds is not None:
                h = self.run_seconds.get(graph)
                if h is None:
                    h = self.run_seconds[graph] = [0.0] * (len(RUN_SECONDS_BUCKETS) + 2)
                h[bisect.bisect_left(RUN_SECONDS_BUCKETS, seconds)] += 1
                h[-1] += seconds

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[str, list[float]]]:
        with self.lock:
            return dict(self.outcomes), {g: list(h) for g, h in self.run_seconds.items()}


class JobQueue:
    """Jobs of ``graphs`` in ``store``, run here by ``run``.

    ``capacity()``: requests the graph can take at once; ``interactive()``: requests running now
    that are not jobs. ``encode(value) -> bytes``: a result as JSON, as the HTTP routes write it.
    """

    def __init__(
        self,
        store: JobStore,
        run: JobRun,
        *,
        graphs: Sequence[str],
        settings: JobSettings,
        encode: Callable[[Any], bytes],
        capacity: int,
        interactive: Callable[[], int] = lambda: 0,
    ) -> None:
        self.store = store
        self.graphs = tuple(graphs)
        self.settings = settings
        self.capacity = max(1, capacity)
        #: Jobs at once in this process.
        self.concurrency = settings.concurrency or max(1, self.capacity // 2)
        self.counters = QueueCounters()
        self._run = run
        self._encode = encode
        self._interactive = interactive
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{new_job_id()[:8]}"
        self._pool = ThreadPoolExecutor(max_workers=store.threads, thread_name_prefix="dagserve-jobs")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()  # running here, cancelled by a user: not sent back to the queue
        self._claiming = False  # a claim is in flight
        self._waiters: dict[str, list[Callable[[], None]]] = {}
        self._waiters_lock = threading.Lock()
        self._pending: list[tuple[JobRecord, asyncio.Future[tuple[JobRecord, bool]]]] = []
        self._writer: asyncio.Task[None] | None = None  # writes _pending, one commit per batch
        self._closed = False
        #: The event loop is saturated: with interactive requests in flight, one job at a time.
        self.busy = False
        self._last_start = 0.0
        #: Counts of other requests begun (each only grows) that jobs yield to: the HTTP ingress
        #: adds its own (graph requests and submissions alike).
        self.loads: list[Callable[[], int]] = []
        #: Requests other than jobs ran during the last probe (see :meth:`_watch_loop`).
        self.contended = False

    # -- the store, off the event loop -------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(self._stored, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def _stored(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` of the store; its own failures become :class:`JobStoreError`."""
        try:
            return fn(*args, **kwargs)
        except DagserveError:
            raise
        except Exception as exc:  # the caller logs it (the HTTP layer, the worker)
            raise JobStoreError(
                f"The jobs store {self.store.location} failed ({type(exc).__name__}: {exc}); nothing was changed. "
                "Retry shortly; if it goes on, check the store (disk space, the Redis server)."
            ) from exc

    # -- submitting and reading --------------------------------------------------------------------
    def new_record(self, graph: str, payload_json: str, key: str | None) -> JobRecord:
        if graph not in self.graphs:
            raise RequestError(f"There is no graph {graph!r} to queue a job for; graphs: {', '.join(self.graphs)}.")
        if key is not None and not (0 < len(key) <= 255):
            raise RequestError("An idempotency key must be 1 to 255 characters long.")
        return JobRecord(id=new_job_id(), graph=graph, payload=payload_json, created=time.time(), key=key)

    def submit(self, graph: str, payload_json: str, key: str | None = None) -> tuple[JobRecord, bool]:
        """Store a job (blocking; any thread); (the job, whether it is new: else the key's first)."""
        record, created = self._stored(self.store.add, self.new_record(graph, payload_json, key))
        if created:
            self.wake()
        return record, created

    async def asubmit(self, graph: str, payload_json: str, key: str | None = None) -> tuple[JobRecord, bool]:
        """:meth:`submit` for the event loop: acknowledged once the store holds the job. Jobs
        submitted while the store writes others are written together, in one commit."""
        loop = asyncio.get_running_loop()
        record = self.new_record(graph, payload_json, key)
        if loop is not self._loop:  # not the worker's loop (an ingress mounted elsewhere): on its own
            record, created = await self._call(self.store.add, record)
        else:
            future: asyncio.Future[tuple[JobRecord, bool]] = loop.create_future()
            self._pending.append((record, future))
            if self._writer is None or self._writer.done():
                self._writer = loop.create_task(self._write_pending())
            record, created = await future
        if created:
            self.wake()
        return record, created

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                stored = await self._call(self.store.add_many, [record for record, _ in batch])
            except Exception as exc:  # every submission of the batch hears of it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, stored, strict=True):
                if not future.done():
                    future.set_result(result)

    def encode_payload(self, payload: Any) -> str:
        """``payload`` as JSON text (the store keeps JSON, as the HTTP route takes)."""
        try:
            return self._encode(payload).decode("utf-8")
        except DagserveError:
            raise RequestError(
                f"The job's payload cannot be written as JSON (it holds a value of type {_unwritable(payload)}); submit dicts, "
                "lists, strings, numbers, booleans and None, as the graph's HTTP route takes."
            ) from None

    def get(self, job_id: str) -> JobRecord | None:
        """The job as stored (blocking; any thread)."""
        return self._stored(self.store.get, job_id)

    async def aget(self, job_id: str) -> JobRecord | None:
        return await self._call(self.store.get, job_id)

    async def alist(
        self, *, graph: str | None = None, status: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[JobRecord]:
        return await self._call(self.list_sync, graph, status, limit, after)

    def list_sync(self, graph: str | None, status: str | None, limit: int, after: str | None) -> list[JobRecord]:
        if status is not None and status not in STATUSES:
            raise RequestError(f"There is no job status {status!r}; use one of {', '.join(STATUSES)}.")
        if limit < 1:
            raise RequestError(f"limit={limit} must be at least 1.")
        return self._stored(self.store.list, graph=graph, status=status, limit=min(limit, MAX_LIST), after=after)

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued or running job (blocking; any thread); the job as it is now, or ``None``."""
        now = time.time()
        error = error_record(JobCancelledError(f"Job {job_id} was cancelled before it finished."))
        record = self._stored(self.store.cancel, job_id, now, now + self.settings.ttl_s, error)
        if record is not None and record.status == "cancelled":
            self._cancel_here(job_id)
            self._notify(job_id)
        return record

    async def acancel(self, job_id: str) -> JobRecord | None:
        return await self._call(self.cancel, job_id)

    def stats(self, graphs: Sequence[str] | None = None) -> dict[str, Any]:
        """Queue depth and running jobs of ``graphs`` (default: this queue's), the oldest queued
        job's age, and what this process runs (blocking: it asks the store)."""
        data = self._stored(self.store.stats, self.graphs if graphs is None else graphs)
        oldest = data.pop("oldest_created")
        data["oldest_age_s"] = max(0.0, time.time() - oldest) if oldest is not None else None
        data["running_here"] = len(self._running)
        data["concurrency"] = self.concurrency
        data["store"] = self.store.location
        return data

    # -- waiting for a job -------------------------------------------------------------------------
    def on_done(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from any thread) when this process finishes or cancels ``job_id``;
        returns the function that unregisters it."""
        with self._waiters_lock:
            self._waiters.setdefault(job_id, []).append(callback)

        def remove() -> None:
            with self._waiters_lock, contextlib.suppress(KeyError, ValueError):
                self._waiters[job_id].remove(callback)
                if not self._waiters[job_id]:
                    del self._waiters[job_id]

        return remove

    def _notify(self, job_id: str) -> None:
        with self._waiters_lock:
            callbacks = self._waiters.pop(job_id, [])
        for callback in callbacks:
            callback()

    # -- the worker --------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the worker on ``loop`` (idempotent; from any thread)."""
        if self._loop is not None or self._closed:
            return
        self._loop = loop
        if _running_loop() is loop:
            self._spawn()
        else:
            loop.call_soon_threadsafe(self._spawn)

    @property
    def started(self) -> bool:
        return self._loop is not None

    def _spawn(self) -> None:
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(), name="dagserve-jobs"),
                       loop.create_task(self._heartbeat(), name="dagserve-jobs-heartbeat"),
                       loop.create_task(self._watch_loop(), name="dagserve-jobs-loop-watch")]

    def wake(self) -> None:
        """A job was queued: let the worker look now (from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        if _running_loop() is loop:
            wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wake.set)

    def room(self) -> int:
        """Jobs the worker may start now: within ``concurrency``, and within what interactive
        requests leave of ``capacity``; while the process is saturated (:meth:`_watch_loop`) and
        requests other than jobs came meanwhile, one job at a time with a pause between them, so
        that jobs still progress."""
        running = len(self._running)
        if self.busy and self.contended:
            # A trickle, so that jobs still progress: one at a time, a pause between them.
            return 1 if not running and time.monotonic() - self._last_start >= BUSY_GAP_S else 0
        free_capacity = self.capacity - self._interactive() - running
        return max(0, min(self.concurrency - running, free_capacity))

    async def _watch_loop(self) -> None:
        """Is the process saturated? Its event loop runs timers late, or it keeps a whole CPU busy
        (the event loop holds the GIL: one core is all it can use). Both smoothed."""
        lag, cpu = 0.0, 0.0
        counted = sum(load() for load in self.loads)
        while not self._closed:
            start, used = time.perf_counter(), time.process_time()
            await asyncio.sleep(LAG_PROBE_S)
            wall = time.perf_counter() - start
            lag = 0.7 * lag + 0.3 * max(0.0, wall - LAG_PROBE_S)
            cpu = 0.7 * cpu + 0.3 * (time.process_time() - used) / wall
            busy = lag > BUSY_LAG_S or cpu > BUSY_CPU
            before, counted = counted, sum(load() for load in self.loads)
            self.contended = counted != before or self._interactive() > 0
            if self.busy and not busy:
                self.wake()  # room again: start jobs now, not at the next poll
            self.busy = busy

    async def _work(self) -> None:
        assert self._wake is not None
        await self._recover(everything=not self.store.shared)
        failures = 0
        while not self._closed:
            room = self.room()
            jobs: list[JobRecord] = []
            if room > 0:
                self._claiming = True
                try:
                    now = time.time()
                    jobs = await self._call(self.store.claim, self.graphs, self.owner, room, now, now + self.settings.lease_s)
                    failures = 0
                except Exception as exc:
                    failures += 1
                    if failures == 1 or failures % 60 == 0:  # not twice a second while a store is down
                        log.warning("Taking jobs from the store failed (%d time(s) in a row): %s", failures, exc)
                    await asyncio.sleep(min(5.0, POLL_S * failures))
                finally:
                    self._claiming = False
            if jobs:
                self._last_start = time.monotonic()
            for record in jobs:
                if record.id in self._cancelled:  # cancelled while it was being claimed
                    continue
                self._running[record.id] = asyncio.get_running_loop().create_task(self._run_one(record))
            self._cancelled &= self._running.keys()
            if jobs and len(jobs) == room:
                await asyncio.sleep(0)  # maybe more: look again once the new tasks started
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S if room > 0 else OVERLOAD_PAUSE_S)

    async def _run_one(self, record: JobRecord) -> None:
        start = time.perf_counter()
        ctx = RequestContext(request_id=record.id, protocol="job")
        outcome, result, error = "failed", None, None
        try:
            answer = await self._run(json.loads(record.payload), record.graph, ctx)
            result = self._encode(answer).decode("utf-8")
            outcome = "succeeded"
        except asyncio.CancelledError:
            if record.id in self._cancelled:
                self.counters.count(record.graph, "cancelled", time.perf_counter() - start)
                return  # the store says cancelled already
            # The server is stopping: the job goes back to the queue, this attempt not counted.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._call(self.store.release, record.id, self.owner))
            raise
        except OverloadedError:
            # The graph turned it away without running it: back to the queue, the attempt not counted.
            await self._call(self.store.release, record.id, self.owner)
            self.counters.count(record.graph, "requeued")
            await asyncio.sleep(OVERLOAD_PAUSE_S)
            return
        except DagserveError as exc:
            error = error_record(exc)
        except Exception as exc:
            log.error("job %s of graph %r failed", record.id, record.graph, exc_info=exc)
            error = error_record(exc)
        finally:
            self._running.pop(record.id, None)
            self._cancelled.discard(record.id)
            self.wake()
        seconds = time.perf_counter() - start
        now = time.time()
        try:
            kept = await self._call(
                self.store.finish, record.id, self.owner, outcome, now, now + self.settings.ttl_s, result=result, error=error
            )
        except Exception:
            log.exception("Recording the outcome of job %s failed; it runs again once its lease expires.", record.id)
            return
        if kept:
            self.counters.count(record.graph, outcome, seconds)
        self._notify(record.id)

    def _cancel_here(self, job_id: str) -> None:
        """Stop ``job_id``'s run if it runs here (decided on the worker's loop)."""
        loop = self._loop
        if loop is None:
            return

        def cancel() -> None:
            task = self._running.get(job_id)
            if task is None:
                if self._claiming:  # maybe among the jobs being claimed: do not start it
                    self._cancelled.add(job_id)
            elif not task.done():
                self._cancelled.add(job_id)
                task.cancel()

        if _running_loop() is loop:
            cancel()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(cancel)

    async def _heartbeat(self) -> None:
        every = self.settings.lease_s / 3
        last_purge = 0.0
        while not self._closed:
            await asyncio.sleep(every)
            try:
                ids = list(self._running)
                if ids:
                    kept = await self._call(self.store.renew, self.owner, ids, time.time() + self.settings.lease_s)
                    for job_id in set(ids) - kept:  # cancelled elsewhere, or taken over: stop it here
                        self._cancel_here(job_id)
                        self._notify(job_id)
                if self.store.shared:
                    await self._recover(everything=False)
                if time.monotonic() - last_purge >= min(PURGE_EVERY_S, self.settings.ttl_s):
                    last_purge = time.monotonic()
                    await self._call(self.store.purge, time.time())
            except Exception:
                log.exception("The jobs heartbeat failed; trying again in %.1f s.", every)

    async def _recover(self, *, everything: bool) -> None:
        now = time.time()
        attempts = self.settings.max_attempts
        error = error_record(
            JobAttemptsExhaustedError(
                f"The job's server stopped while running it {attempts} times (max_attempts={attempts}); "
                "it was not run again. Look for what killed the server (memory?) in its logs."
            )
        )
        try:
            queued, failed = await self._call(self.store.recover, now, attempts, now + self.settings.ttl_s, error,
                                              everything=everything)
        except Exception:
            log.exception("Re-queueing the jobs of stopped servers failed.")
            return
        if queued or failed:
            log.warning("%d job(s) left running by a stopped server were queued again, %d failed after %d attempts.",
                        queued, failed, attempts)
            self.wake()

    async def stop(self) -> None:
        """Stop the worker (on its loop): running jobs go back to the queue; the store closes."""
        if self._closed:
            return
        self._closed = True
        tasks = [*self._tasks, *self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pool.submit(self.store.close)
        self._pool.shutdown(wait=True)

    def close(self) -> None:
        """Close without a running loop (its tasks are gone with it): jobs left running are
        re-queued by the next server on this store."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and _running_loop() is self._loop:
            for task in [*self._tasks, *self._running.values()]:
                task.cancel()
        self._pool.submit(self.store.close)
        self._pool.shutdown(wait=True)


def _unwritable(value: Any) -> str:
    """The type name of the first thing in ``value`` that JSON cannot hold (a guess for the message)."""
    if isinstance(value, dict):
        return next((_unwritable(v) for v in value.values() if not isinstance(v, (str, int, float, bool, type(None)))), "value")
    if isinstance(value, (list, tuple)):
        return next((_unwritable(v) for v in value if not isinstance(v, (str, int, float, bool, type(None)))), "value")
    return type(value).__name__


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
