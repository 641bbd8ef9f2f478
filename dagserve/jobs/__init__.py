"""Queued jobs: submit a payload now, fetch the graph's answer later (docs/jobs.md).

``record.py`` (a job as stored, its states, :class:`JobSettings`), ``store.py`` (the store
interface), ``sqlite.py`` and ``redis.py`` (the stores), ``queue.py`` (the
worker that runs queued jobs through a callable), ``job.py`` (:class:`Job`, the handle users
hold), ``error_record.py`` (errors as JSON and back). Nothing here knows of the App or of HTTP.
"""

from __future__ import annotations

from dagserve.jobs.job import Job
from dagserve.jobs.queue import JobQueue
from dagserve.jobs.record import FINISHED, STATUSES, JobRecord, JobSettings
from dagserve.jobs.host import open_store
from dagserve.jobs.store import JobStore, default_db_path

__all__ = ["FINISHED", "STATUSES", "Job", "JobQueue", "JobRecord", "JobSettings", "JobStore", "default_db_path", "open_store"]
