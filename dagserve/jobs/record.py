"""A job as stored: :class:`JobRecord`, its states, and the settings of a queue (:class:`JobSettings`).

::

    queued ──claim──> running ──> succeeded | failed
       │                 │  └──(server died: lease expired, or restarted)──> queued (attempts counted)
       └──cancel──> cancelled <──cancel──┘

Payloads and results are JSON text; an error is a JSON object (:mod:`dagserve.jobs.error_record`),
so any process, in any language, can read the store.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from typing import Any

from dagserve._errors import OptionsError

__all__ = ["FINISHED", "STATUSES", "JobRecord", "JobSettings", "new_job_id"]

#: Every state a job can be in.
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
#: The states a job leaves no more (its result is kept ``ttl_s``, then deleted).
FINISHED = frozenset({"succeeded", "failed", "cancelled"})

#: Results are kept this long after a job finishes (``--jobs-ttl``).
DEFAULT_TTL_S = 24 * 3600.0
#: Runs of one job before it fails for good because its server kept dying (``--jobs-max-attempts``).
DEFAULT_MAX_ATTEMPTS = 3
#: A running job's lease: renewed every third of it while it runs; once expired, another server
#: (sharing a Redis store) takes the job over.
DEFAULT_LEASE_S = 30.0


def new_job_id() -> str:
    """A job id nobody can guess: 144 random bits, URL-safe (24 characters)."""
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class JobSettings:
    """How a server runs jobs: ``ttl_s`` (results kept, default 24 h), ``max_attempts`` (runs
    before a job whose server kept dying fails, default 3), ``concurrency`` (jobs at once in this
    process; ``None``: half of what the graph's smallest node takes, see docs/jobs.md) and
    ``lease_s`` (how long a dead server's running jobs wait before another server takes them)."""

    ttl_s: float = DEFAULT_TTL_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    concurrency: int | None = None
    lease_s: float = DEFAULT_LEASE_S

    def __post_init__(self) -> None:
        for name in ("ttl_s", "lease_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise OptionsError(f"Job setting {name}={value!r} is invalid; it must be a positive number of seconds.")
        for name in ("max_attempts", "concurrency"):
            value = getattr(self, name)
            if value is None and name == "concurrency":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionsError(f"Job setting {name}={value!r} is invalid; it must be a positive integer.")


@dataclass
class JobRecord:
    """One job: what the store keeps. ``payload`` and ``result`` are JSON text, ``error`` an error
    record; times are Unix seconds (``created``, ``started`` of the last attempt, ``finished``)."""

    id: str
    graph: str
    payload: str
    status: str = "queued"
    attempts: int = 0
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    result: str | None = None
    error: dict[str, Any] | None = None
    key: str | None = None
    owner: str | None = None
    lease_until: float | None = None
    expires: float | None = None
    seq: int = 0

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    def to_dict(self, *, result: bool = True) -> dict[str, Any]:
        """The public view without ``error`` (the HTTP layer writes it in its error shape): no
        payload, no lease; ``result`` parsed (left out with ``result=False``)."""
        out: dict[str, Any] = {
            "id": self.id,
            "graph": self.graph,
            "status": self.status,
            "attempts": self.attempts,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
        }
        if self.key is not None:
            out["key"] = self.key
        if result and self.status == "succeeded":
            out["result"] = json.loads(self.result) if self.result is not None else None
        return out
