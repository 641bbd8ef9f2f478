"""The store contract, on SQLite (a file and in memory) and on a real redis-server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagserve.jobs import JobRecord, JobStore, open_store
from dagserve.jobs.record import new_job_id
from dagserve.jobs.redis import PREFIX

ERROR = {"class": "JobAttemptsExhaustedError", "message": "gone"}


@pytest.fixture(params=["sqlite", "memory", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        import redis

        client = redis.Redis.from_url(url)
        for key in client.scan_iter(PREFIX + "*"):  # a clean queue per test
            client.delete(key)
        client.close()
        s = open_store(url)
    else:
        s = open_store(tmp_path / "jobs.sqlite3" if request.param == "sqlite" else None)
    yield s
    s.close()


def add(store: JobStore, graph: str = "g", key: str | None = None, payload: str = "{}") -> JobRecord:
    record, created = store.add(JobRecord(id=new_job_id(), graph=graph, payload=payload, created=time.time(), key=key))
    assert created or key is not None
    return record


def test_add_get_and_idempotency_key(store: JobStore) -> None:
    first = add(store, key="k", payload='{"a": 1}')
    again, created = store.add(JobRecord(id=new_job_id(), graph="g", payload="{}", created=time.time(), key="k"))
    assert not created and again.id == first.id and again.payload == '{"a": 1}'
    other, created = store.add(JobRecord(id=new_job_id(), graph="h", payload="{}", created=time.time(), key="k"))
    assert created and other.id != first.id  # keys are per graph
    got = store.get(first.id)
    assert got is not None and got.status == "queued" and got.attempts == 0 and got.key == "k"
    assert store.get("nope") is None


def test_claim_is_fifo_per_graph_and_counts_attempts(store: JobStore) -> None:
    jobs = [add(store) for _ in range(5)]
    add(store, graph="other")
    now = time.time()
    taken = store.claim(["g"], "me", 3, now, now + 30)
    assert [r.id for r in taken] == [j.id for j in jobs[:3]]
    assert all(r.status == "running" and r.attempts == 1 and r.owner == "me" for r in taken)
    rest = store.claim(["g"], "you", 10, now, now + 30)
    assert [r.id for r in rest] == [j.id for j in jobs[3:]]
    assert store.claim(["g"], "you", 10, now, now + 30) == []
    stats = store.stats(["g"])
    assert stats["queued"] == 0 and stats["oldest_created"] is None and stats["running"] == 5


def test_finish_only_by_the_owner_and_renew(store: JobStore) -> None:
    job = add(store)
    now = time.time()
    store.claim(["g"], "me", 1, now, now + 30)
    assert store.renew("me", [job.id], now + 60) == {job.id}
    assert store.renew("you", [job.id], now + 60) == set()
    assert not store.finish(job.id, "you", "succeeded", now, now + 100, result="1")
    assert store.finish(job.id, "me", "succeeded", now, now + 100, result='{"n": 2}')
    got = store.get(job.id)
    assert got is not None and got.status == "succeeded" and got.result == '{"n": 2}' and got.finished == pytest.approx(now)
    assert not store.finish(job.id, "me", "failed", now, now + 100)  # once


def test_cancel_queued_and_running_not_finished(store: JobStore) -> None:
    queued, running, done = add(store), add(store), add(store)
    now = time.time()
    store.claim(["g"], "me", 0, now, now)  # nothing
    claimed = store.claim(["g"], "me", 3, now, now + 30)
    assert len(claimed) == 3
    store.release(queued.id, "me")
    store.finish(done.id, "me", "succeeded", now, now + 100, result="1")
    for job_id in (queued.id, running.id):
        record = store.cancel(job_id, now, now + 100, {"class": "JobCancelledError", "message": "x"})
        assert record is not None and record.status == "cancelled" and record.error is not None
    assert store.renew("me", [running.id], now + 60) == set()  # the owner learns it at its next heartbeat
    assert not store.finish(running.id, "me", "succeeded", now, now + 100, result="1")
    record = store.cancel(done.id, now, now + 100, {"class": "JobCancelledError", "message": "x"})
    assert record is not None and record.status == "succeeded"
    assert store.cancel("nope", now, now, {}) is None


def test_release_puts_it_back_without_counting(store: JobStore) -> None:
    job = add(store)
    now = time.time()
    store.claim(["g"], "me", 1, now, now + 30)
    assert store.release(job.id, "me")
    got = store.get(job.id)
    assert got is not None and got.status == "queued" and got.attempts == 0
    assert [r.id for r in store.claim(["g"], "me", 1, now, now + 30)] == [job.id]


def test_recover_requeues_lapsed_leases_and_fails_after_max_attempts(store: JobStore) -> None:
    lapsed, fresh = add(store), add(store)
    now = time.time()
    store.claim(["g"], "dead", 1, now, now - 1)  # its server died: the lease ran out
    store.claim(["g"], "alive", 1, now, now + 30)
    assert store.recover(now, 3, now + 100, ERROR, everything=False) == (1, 0)
    assert (store.get(lapsed.id).status, store.get(fresh.id).status) == ("queued", "running")  # type: ignore[union-attr]
    store.claim(["g"], "dead", 1, now, now - 1)  # attempt 2, lost again
    assert store.recover(now, 3, now + 100, ERROR, everything=False) == (1, 0)
    store.claim(["g"], "dead", 1, now, now - 1)  # attempt 3, lost again: no more
    assert store.recover(now, 3, now + 100, ERROR, everything=False) == (0, 1)
    worn = store.get(lapsed.id)
    assert worn is not None and worn.status == "failed" and worn.attempts == 3 and worn.error == ERROR
    # A restarted server on a store of its own takes back every running job at once.
    assert store.recover(now, 3, now + 100, ERROR, everything=True) == (1, 0)
    assert store.get(fresh.id).status == "queued"  # type: ignore[union-attr]


def test_purge_deletes_finished_jobs_past_their_time_and_frees_their_key(store: JobStore) -> None:
    old, kept = add(store, key="k"), add(store)
    now = time.time()
    store.claim(["g"], "me", 2, now, now + 30)
    store.finish(old.id, "me", "succeeded", now, now - 1, result="1")
    store.finish(kept.id, "me", "succeeded", now, now + 100, result="1")
    assert store.purge(now) == 1
    assert store.get(old.id) is None and store.get(kept.id) is not None
    new = add(store, key="k")
    assert new.id != old.id


def test_list_filters_and_pages(store: JobStore) -> None:
    jobs = [add(store, graph="g" if i % 2 else "h") for i in range(7)]
    assert [r.id for r in store.list()] == [j.id for j in jobs]
    first = store.list(limit=3)
    second = store.list(limit=3, after=first[-1].id)
    assert [r.id for r in first + second] == [j.id for j in jobs[:6]]
    assert [r.id for r in store.list(graph="g")] == [j.id for j in jobs if j.graph == "g"]
    now = time.time()
    store.claim(["h"], "me", 1, now, now + 30)
    assert [r.id for r in store.list(status="running")] == [jobs[0].id]
    assert [r.id for r in store.list(status="queued", graph="h")] == [jobs[2].id, jobs[4].id, jobs[6].id]
    stats = store.stats(["h"])
    assert stats["queued"] == 3 and stats["oldest_created"] == pytest.approx(jobs[2].created)
