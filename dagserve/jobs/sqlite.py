"""Jobs in a SQLite file (WAL mode), for one server; or in memory (``":memory:"``).

One connection, guarded by a lock, used from the queue's own thread (and from user threads
calling ``job.status()``). ``synchronous=NORMAL`` in WAL mode: a commit reaches the operating
system before ``add`` returns, so a killed server (SIGKILL, a crash) loses nothing it
acknowledged; a power cut may lose the last commits (``synchronous=FULL`` would cost an fsync
per job).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dagserve._errors import OptionsError
from dagserve.jobs.record import JobRecord
from dagserve.jobs.store import JobStore

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    graph TEXT NOT NULL,
    status TEXT NOT NULL,
    idem_key TEXT,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    result TEXT,
    error TEXT,
    owner TEXT,
    lease_until REAL,
    expires REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_key ON jobs (graph, idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, graph, seq);
CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires) WHERE expires IS NOT NULL;
"""

_SUMMARY = "seq, id, graph, status, idem_key, attempts, created, started, finished, error, owner, lease_until, expires"
_ALL = _SUMMARY + ", payload, result"


class SQLiteStore(JobStore):
    """Jobs in the SQLite database at ``path`` (created with its directory; ``":memory:"``: none)."""

    shared = False
    threads = 1

    def __init__(self, path: str | Path) -> None:
        text = str(path)
        self.location = text
        if text != ":memory:":
            try:
                Path(text).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OptionsError(f"Cannot create the directory of the jobs database {text!r}: {exc}.") from None
            text = str(Path(text).expanduser())
        try:
            self._db = sqlite3.connect(text, check_same_thread=False, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise OptionsError(f"Cannot open the jobs database {self.location!r}: {exc}.") from None
        self._lock = threading.Lock()

    # -- writing -----------------------------------------------------------------------------------
    def add(self, record: JobRecord) -> tuple[JobRecord, bool]:
        return self.add_many([record])[0]

    def add_many(self, records: Sequence[JobRecord]) -> list[tuple[JobRecord, bool]]:
        """One transaction, one commit for all of them (submissions that arrive together)."""
        out: list[tuple[JobRecord, bool]] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for record in records:
                    out.append(self._insert(record))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def _insert(self, record: JobRecord) -> tuple[JobRecord, bool]:
        if record.key is not None:
            row = self._db.execute(
                f"SELECT {_ALL} FROM jobs WHERE graph = ? AND idem_key = ?", (record.graph, record.key)
            ).fetchone()
            if row is not None:
                return _record(row), False
        cur = self._db.execute(
            "INSERT INTO jobs (id, graph, status, idem_key, payload, created) VALUES (?, ?, 'queued', ?, ?, ?)",
            (record.id, record.graph, record.key, record.payload, record.created),
        )
        record.seq = int(cur.lastrowid or 0)
        return record, True

    def claim(self, graphs: Sequence[str], owner: str, n: int, now: float, lease_until: float) -> list[JobRecord]:
        if n <= 0 or not graphs:
            return []
        marks = ", ".join("?" * len(graphs))
        with self._lock:
            rows = self._db.execute(
                f"UPDATE jobs SET status = 'running', owner = ?, lease_until = ?, started = ?, attempts = attempts + 1 "
                f"WHERE seq IN (SELECT seq FROM jobs WHERE status = 'queued' AND graph IN ({marks}) ORDER BY seq LIMIT ?) "
                f"RETURNING {_ALL}",
                (owner, lease_until, now, *graphs, n),
            ).fetchall()
        return sorted((_record(r) for r in rows), key=lambda r: r.seq)

    def renew(self, owner: str, ids: Sequence[str], lease_until: float) -> set[str]:
        if not ids:
            return set()
        marks = ", ".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(
                f"UPDATE jobs SET lease_until = ? WHERE status = 'running' AND owner = ? AND id IN ({marks}) RETURNING id",
                (lease_until, owner, *ids),
            ).fetchall()
        return {r[0] for r in rows}

    def finish(
        self, job_id: str, owner: str, status: str, now: float, expires: float, *,
        result: str | None = None, error: dict[str, Any] | None = None,
    ) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status = ?, finished = ?, expires = ?, result = ?, error = ?, owner = NULL, "
                "lease_until = NULL, payload = '' WHERE id = ? AND status = 'running' AND owner = ?",
                (status, now, expires, result, _dump(error), job_id, owner),
            )
            return cur.rowcount == 1

    def release(self, job_id: str, owner: str) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status = 'queued', attempts = attempts - 1, owner = NULL, lease_until = NULL "
                "WHERE id = ? AND status = 'running' AND owner = ?",
                (job_id, owner),
            )
            return cur.rowcount == 1

    def cancel(self, job_id: str, now: float, expires: float, error: dict[str, Any]) -> JobRecord | None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = 'cancelled', finished = ?, expires = ?, error = ?, owner = NULL, "
                "lease_until = NULL, payload = '' WHERE id = ? AND status IN ('queued', 'running')",
                (now, expires, _dump(error), job_id),
            )
            row = self._db.execute(f"SELECT {_ALL} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def recover(self, now: float, max_attempts: int, expires: float, error: dict[str, Any], *, everything: bool) -> tuple[int, int]:
        lapsed = "status = 'running'" + ("" if everything else " AND lease_until < ?")
        args: tuple[Any, ...] = () if everything else (now,)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                failed = self._db.execute(
                    f"UPDATE jobs SET status = 'failed', finished = ?, expires = ?, error = ?, owner = NULL, "
                    f"lease_until = NULL, payload = '' WHERE {lapsed} AND attempts >= ?",
                    (now, expires, _dump(error), *args, max_attempts),
                ).rowcount
                queued = self._db.execute(
                    f"UPDATE jobs SET status = 'queued', owner = NULL, lease_until = NULL WHERE {lapsed}", args
                ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return queued, failed

    def purge(self, now: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM jobs WHERE expires IS NOT NULL AND expires < ?", (now,)).rowcount

    # -- reading -----------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_ALL} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def list(
        self, *, graph: str | None = None, status: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[JobRecord]:
        where, args = [], []
        if graph is not None:
            where.append("graph = ?")
            args.append(graph)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if after is not None:
            where.append("seq > COALESCE((SELECT seq FROM jobs WHERE id = ?), 0)")
            args.append(after)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self._lock:
            rows = self._db.execute(f"SELECT {_SUMMARY} FROM jobs {clause}ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        return [_record((*r, "", None)) for r in rows]

    def stats(self, graphs: Sequence[str]) -> dict[str, Any]:
        marks = ", ".join("?" * len(graphs))
        with self._lock:
            rows = self._db.execute(
                f"SELECT status, COUNT(*), MIN(created) FROM jobs WHERE status IN ('queued', 'running') "
                f"AND graph IN ({marks}) GROUP BY status",
                tuple(graphs),
            ).fetchall()
        by = {status: (count, oldest) for status, count, oldest in rows}
        return {
            "queued": by.get("queued", (0, None))[0],
            "running": by.get("running", (0, None))[0],
            "oldest_created": by.get("queued", (0, None))[1],
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _dump(error: dict[str, Any] | None) -> str | None:
    return None if error is None else json.dumps(error)


def _record(row: tuple[Any, ...]) -> JobRecord:
    seq, id_, graph, status, key, attempts, created, started, finished, error, owner, lease, expires, payload, result = row
    return JobRecord(
        id=id_, graph=graph, payload=payload, status=status, attempts=attempts, created=created, started=started,
        finished=finished, result=result, error=None if error is None else json.loads(error), key=key, owner=owner,
        lease_until=lease, expires=expires, seq=seq,
    )
