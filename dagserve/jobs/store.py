"""Where jobs are kept: the :class:`JobStore` interface, and the default place of a SQLite file.

A store is synchronous and thread-safe; the queue (:mod:`dagserve.jobs.queue`) calls it on its
own threads, never on the event loop. Every state change is one atomic step of the store (one
SQLite transaction, one Redis script), so a process killed at any instant leaves each job either
before or after the step. Two implementations:

* :class:`~dagserve.jobs.sqlite.SQLiteStore`: a file in WAL mode, one server (``--jobs-db``);
  ``":memory:"`` for jobs kept only while the App lives (``deploy(jobs_store=None)``).
* :class:`~dagserve.jobs.redis.RedisStore`: ``redis://HOST:PORT/DB``, several servers sharing one
  queue (``--jobs-store``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dagserve.jobs.record import JobRecord

__all__ = ["JobStore", "default_db_path", "state_dir"]


class JobStore(ABC):
    """The operations a job queue needs; each is atomic. Times are Unix seconds."""

    #: Where the jobs are (a path or a URL without its password), for logs and status.
    location: str = ""
    #: Several servers may share it: running jobs of a dead server come back only when their lease
    #: expires. Otherwise (one server per store) a starting server re-queues every running job.
    shared: bool = False
    #: Threads the queue may call the store from at once.
    threads: int = 1

    @abstractmethod
    def add(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Store a new queued job; with ``record.key`` already used for its graph, the first job
        instead. Returns (the job, whether it is new). Durable once it returns."""

    def add_many(self, records: Sequence[JobRecord]) -> list[tuple[JobRecord, bool]]:
        """:meth:`add` for several jobs at once (a store may commit them together)."""
        return [self.add(record) for record in records]

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def list(
        self, *, graph: str | None = None, status: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[JobRecord]:
        """Jobs in the order they were submitted, from the one after ``after`` (an id); no payloads."""

    @abstractmethod
    def claim(self, graphs: Sequence[str], owner: str, n: int, now: float, lease_until: float) -> list[JobRecord]:
        """Take up to ``n`` of the oldest queued jobs of ``graphs``: now ``running``, owned by
        ``owner`` until ``lease_until``, one more attempt counted."""

    @abstractmethod
    def renew(self, owner: str, ids: Sequence[str], lease_until: float) -> set[str]:
        """Extend the leases of ``owner``'s running jobs ``ids``; returns those still its own (a
        job missing was cancelled, or taken over after its lease expired)."""

    @abstractmethod
    def finish(
        self, job_id: str, owner: str, status: str, now: float, expires: float, *,
        result: str | None = None, error: dict[str, Any] | None = None,
    ) -> bool:
        """Record the outcome of ``owner``'s running job; ``False`` if it is no longer its own."""

    @abstractmethod
    def release(self, job_id: str, owner: str) -> bool:
        """Put ``owner``'s running job back in the queue without counting the attempt (it was
        interrupted on purpose: the server stopping, the graph overloaded)."""

    @abstractmethod
    def cancel(self, job_id: str, now: float, expires: float, error: dict[str, Any]) -> JobRecord | None:
        """Cancel a queued or running job (a finished one stays as it is); the job, or ``None``."""

    @abstractmethod
    def recover(self, now: float, max_attempts: int, expires: float, error: dict[str, Any], *, everything: bool) -> tuple[int, int]:
        """Running jobs whose lease expired (``everything``: all running jobs) go back to the
        queue, or fail with ``error`` once ``max_attempts`` ran; returns (re-queued, failed)."""

    @abstractmethod
    def purge(self, now: float) -> int:
        """Delete finished jobs whose time is up; returns how many."""

    @abstractmethod
    def stats(self, graphs: Sequence[str]) -> dict[str, Any]:
        """``{"queued": n, "running": n, "oldest_created": unix time or None}`` for ``graphs``."""

    @abstractmethod
    def close(self) -> None: ...


def state_dir() -> Path:
    """The user's state directory for dagserve: ``$XDG_STATE_HOME/dagserve`` or ``~/.local/state/dagserve``."""
    base = os.environ.get("XDG_STATE_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "dagserve"


def default_db_path(host: str, port: int) -> Path:
    """The SQLite file of the server on ``host:port`` (one server per file)."""
    name = host.strip("[]").lower()
    name = "127.0.0.1" if name == "localhost" else name
    return state_dir() / f"jobs-{name.replace(':', '_')}-{port}.sqlite3"
