"""``dagserve.Job``: a submitted job, to ask about, wait for or cancel (``app.submit`` returns one)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import TYPE_CHECKING, Any

from dagserve._errors import JobNotFoundError
from dagserve.jobs.error_record import rebuild_error

if TYPE_CHECKING:
    from dagserve.jobs.queue import JobQueue
    from dagserve.jobs.record import JobRecord

__all__ = ["Job"]

#: Waiting for a job another process runs: the store is read at most this often.
_MAX_POLL_S = 0.5


class Job:
    """A job in an App's queue::

        job = app.submit({"text": "a long document"})
        job.id                      # 'k3Jb...' (144 random bits)
        job.status()                # 'queued', 'running', 'succeeded', 'failed' or 'cancelled'
        job.result(timeout=60)      # the graph's answer, as JSON data; raises the node's error
        job.cancel()

    ``await job.aresult()`` waits without blocking an event loop. The result is what the graph's
    HTTP route answers, decoded from JSON (numpy arrays come back as lists).
    """

    def __init__(self, job_id: str, queue: JobQueue) -> None:
        self.id = job_id
        self._queue = queue

    def record(self) -> JobRecord:
        """The job as stored now; :class:`~dagserve.JobNotFoundError` if there is none."""
        record = self._queue.get(self.id)
        if record is None:
            raise _not_found(self.id)
        return record

    def status(self) -> str:
        """``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return self.record().status

    def cancel(self) -> bool:
        """Cancel the job if it has not finished (a running one stops as if its client hung up);
        ``True`` if it is cancelled now."""
        record = self._queue.cancel(self.id)
        if record is None:
            raise _not_found(self.id)
        return record.status == "cancelled"

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return the graph's answer; raises the error it failed with
        (:class:`~dagserve.NodeError` ...), :class:`~dagserve.JobCancelledError`, or
        :class:`TimeoutError` when ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            done = threading.Event()
            remove = self._queue.on_done(self.id, done.set)
            try:
                record = self.record()
                if record.done:
                    return _outcome(record)
                done.wait(_wait_for(delay, deadline, self.id, timeout))
            finally:
                remove()
            delay = min(delay * 2, _MAX_POLL_S)

    async def aresult(self, timeout: float | None = None) -> Any:
        """:meth:`result` for async code."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            done = asyncio.Event()
            remove = self._queue.on_done(self.id, lambda: loop.call_soon_threadsafe(done.set))
            try:
                record = await self._queue.aget(self.id)
                if record is None:
                    raise _not_found(self.id)
                if record.done:
                    return _outcome(record)
                try:
                    await asyncio.wait_for(done.wait(), _wait_for(delay, deadline, self.id, timeout))
                except TimeoutError:
                    pass
            finally:
                remove()
            delay = min(delay * 2, _MAX_POLL_S)

    def __repr__(self) -> str:
        return f"<dagserve.Job {self.id}>"


def _wait_for(delay: float, deadline: float | None, job_id: str, timeout: float | None) -> float:
    if deadline is None:
        return delay
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"Job {job_id} did not finish within {timeout:g} s; it goes on (job.result() again waits more).")
    return min(delay, left)


def _outcome(record: JobRecord) -> Any:
    if record.status == "succeeded":
        return None if record.result is None else json.loads(record.result)
    raise rebuild_error(record.error or {"class": "DagserveError", "message": f"Job {record.id} {record.status}."})


def _not_found(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(
        f"There is no job {job_id!r}: it never existed here, or it finished longer ago than results are kept (jobs ttl)."
    )
