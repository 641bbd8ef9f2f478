"""Jobs in Redis (``redis://HOST:PORT/DB``): one queue shared by several servers.

Keys (all under ``dagserve:jobs:``): ``job:<id>`` a hash per job; ``q:<graph>`` the queued ids by
submission order; ``running`` the running ids by lease end; ``all`` every id by submission order
(listings); ``expiring`` finished ids by the time they are deleted; ``key:<graph>:<key>`` an
idempotency key's job; ``seq`` the submission counter. Every change of state is one Lua script,
so it is atomic. Times are the servers' clocks (keep them in sync, as for any lease).
Durability is Redis's own: with ``appendonly yes`` (and ``appendfsync everysec``, its default) a
Redis restart loses at most the last second.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence
from typing import Any

from dagserve._errors import OptionsError
from dagserve.jobs.record import JobRecord
from dagserve.jobs.store import JobStore

__all__ = ["PREFIX", "RedisStore"]

PREFIX = "dagserve:jobs:"

# ARGV: id, graph, key, payload, created -> {id, 1 new | 0 existing}
_ADD = """
local P = KEYS[1]
local id, graph, key = ARGV[1], ARGV[2], ARGV[3]
if key ~= '' then
  local first = redis.call('GET', P .. 'key:' .. graph .. ':' .. key)
  if first then return {first, 0} end
end
local seq = redis.call('INCR', P .. 'seq')
redis.call('HSET', P .. 'job:' .. id, 'id', id, 'graph', graph, 'status', 'queued', 'payload', ARGV[4],
           'attempts', 0, 'created', ARGV[5], 'seq', seq, 'key', key)
redis.call('ZADD', P .. 'q:' .. graph, seq, id)
redis.call('ZADD', P .. 'all', seq, id)
if key ~= '' then redis.call('SET', P .. 'key:' .. graph .. ':' .. key, id) end
return {id, 1}
"""

# ARGV: owner, n, now, lease_until, graphs... -> ids taken
_CLAIM = """
local P = KEYS[1]
local owner, n, now, lease = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local taken = {}
for i = 5, #ARGV do
  if #taken >= n then break end
  local popped = redis.call('ZPOPMIN', P .. 'q:' .. ARGV[i], n - #taken)
  for j = 1, #popped, 2 do
    local id = popped[j]
    local job = P .. 'job:' .. id
    redis.call('HSET', job, 'status', 'running', 'owner', owner, 'lease_until', lease, 'started', now)
    redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('ZADD', P .. 'running', lease, id)
    taken[#taken + 1] = id
  end
end
return taken
"""

# ARGV: owner, lease_until, ids... -> ids still the owner's
_RENEW = """
local P = KEYS[1]
local kept = {}
for i = 3, #ARGV do
  local job = P .. 'job:' .. ARGV[i]
  local state = redis.call('HMGET', job, 'status', 'owner')
  if state[1] == 'running' and state[2] == ARGV[1] then
    redis.call('HSET', job, 'lease_until', ARGV[2])
    redis.call('ZADD', P .. 'running', ARGV[2], ARGV[i])
    kept[#kept + 1] = ARGV[i]
  end
end
return kept
"""

# ARGV: id, owner, status, now, expires, result, error -> 1 recorded | 0 not the owner's
_FINISH = """
local P = KEYS[1]
local job = P .. 'job:' .. ARGV[1]
local state = redis.call('HMGET', job, 'status', 'owner')
if state[1] ~= 'running' or state[2] ~= ARGV[2] then return 0 end
redis.call('HSET', job, 'status', ARGV[3], 'finished', ARGV[4], 'expires', ARGV[5], 'result', ARGV[6],
           'error', ARGV[7], 'payload', '')
redis.call('HDEL', job, 'owner', 'lease_until')
redis.call('ZREM', P .. 'running', ARGV[1])
redis.call('ZADD', P .. 'expiring', ARGV[5], ARGV[1])
return 1
"""

# ARGV: id, owner -> 1 | 0
_RELEASE = """
local P = KEYS[1]
local job = P .. 'job:' .. ARGV[1]
local state = redis.call('HMGET', job, 'status', 'owner', 'graph', 'seq')
if state[1] ~= 'running' or state[2] ~= ARGV[2] then return 0 end
redis.call('HSET', job, 'status', 'queued')
redis.call('HINCRBY', job, 'attempts', -1)
redis.call('HDEL', job, 'owner', 'lease_until')
redis.call('ZREM', P .. 'running', ARGV[1])
redis.call('ZADD', P .. 'q:' .. state[3], state[4], ARGV[1])
return 1
"""

# ARGV: id, now, expires, error -> 1 cancelled now | 0
_CANCEL = """
local P = KEYS[1]
local job = P .. 'job:' .. ARGV[1]
local state = redis.call('HMGET', job, 'status', 'graph')
if state[1] ~= 'queued' and state[1] ~= 'running' then return 0 end
redis.call('ZREM', P .. 'q:' .. state[2], ARGV[1])
redis.call('ZREM', P .. 'running', ARGV[1])
redis.call('HSET', job, 'status', 'cancelled', 'finished', ARGV[2], 'expires', ARGV[3], 'error', ARGV[4], 'payload', '')
redis.call('HDEL', job, 'owner', 'lease_until')
redis.call('ZADD', P .. 'expiring', ARGV[3], ARGV[1])
return 1
"""

# ARGV: now, max_attempts, expires, error, everything -> {re-queued, failed}
_RECOVER = """
local P = KEYS[1]
local ids
if ARGV[5] == '1' then ids = redis.call('ZRANGE', P .. 'running', 0, -1)
else ids = redis.call('ZRANGEBYSCORE', P .. 'running', '-inf', '(' .. ARGV[1]) end
local queued, failed = 0, 0
for _, id in ipairs(ids) do
  local job = P .. 'job:' .. id
  local state = redis.call('HMGET', job, 'attempts', 'graph', 'seq')
  redis.call('ZREM', P .. 'running', id)
  redis.call('HDEL', job, 'owner', 'lease_until')
  if tonumber(state[1]) >= tonumber(ARGV[2]) then
    redis.call('HSET', job, 'status', 'failed', 'finished', ARGV[1], 'expires', ARGV[3], 'error', ARGV[4], 'payload', '')
    redis.call('ZADD', P .. 'expiring', ARGV[3], id)
    failed = failed + 1
  else
    redis.call('HSET', job, 'status', 'queued')
    redis.call('ZADD', P .. 'q:' .. state[2], state[3], id)
    queued = queued + 1
  end
end
return {queued, failed}
"""

# ARGV: now -> deleted
_PURGE = """
local P = KEYS[1]
local ids = redis.call('ZRANGEBYSCORE', P .. 'expiring', '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, id in ipairs(ids) do
  local job = P .. 'job:' .. id
  local state = redis.call('HMGET', job, 'graph', 'key')
  if state[2] and state[2] ~= '' then
    local k = P .. 'key:' .. state[1] .. ':' .. state[2]
    if redis.call('GET', k) == id then redis.call('DEL', k) end
  end
  redis.call('DEL', job)
  redis.call('ZREM', P .. 'all', id)
  redis.call('ZREM', P .. 'expiring', id)
end
return #ids
"""

_SUMMARY_FIELDS = ("id", "graph", "status", "attempts", "created", "started", "finished", "error", "key", "seq")
#: A listing with filters reads the index this many entries at a time.
_PAGE = 500


class RedisStore(JobStore):
    """Jobs in the Redis database at ``url`` (``redis://HOST:PORT/DB``; a password in the URL)."""

    shared = True
    threads = 4

    def __init__(self, url: str) -> None:
        try:
            import redis
        except ImportError:
            raise OptionsError(
                "A redis:// jobs store needs the Redis client: pip install 'dagserve[redis]'."
            ) from None
        parts = urllib.parse.urlsplit(url)
        self.location = urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname or "" if not parts.port
                                                              else f"{parts.hostname}:{parts.port}"))
        try:
            self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, health_check_interval=30)
            self._redis.ping()
        except (redis.RedisError, ValueError) as exc:
            raise OptionsError(f"Cannot reach the jobs store {self.location}: {str(exc).rstrip('.')}.") from None
        self._scripts = {
            name: self._redis.register_script(code)
            for name, code in {"add": _ADD, "claim": _CLAIM, "renew": _RENEW, "finish": _FINISH, "release": _RELEASE,
                               "cancel": _CANCEL, "recover": _RECOVER, "purge": _PURGE}.items()
        }

    def _run(self, name: str, *args: Any) -> Any:
        return self._scripts[name](keys=[PREFIX], args=list(args))

    def add(self, record: JobRecord) -> tuple[JobRecord, bool]:
        job_id, new = self._run("add", record.id, record.graph, record.key or "", record.payload, repr(record.created))
        if new:
            return record, True
        first = self.get(job_id)
        if first is None:  # deleted between the two calls (its time was up): store this one
            return self.add(record)
        return first, False

    def claim(self, graphs: Sequence[str], owner: str, n: int, now: float, lease_until: float) -> list[JobRecord]:
        if n <= 0 or not graphs:
            return []
        ids = self._run("claim", owner, n, repr(now), repr(lease_until), *graphs)
        return [r for r in (self.get(i) for i in ids) if r is not None]

    def renew(self, owner: str, ids: Sequence[str], lease_until: float) -> set[str]:
        if not ids:
            return set()
        return set(self._run("renew", owner, repr(lease_until), *ids))

    def finish(
        self, job_id: str, owner: str, status: str, now: float, expires: float, *,
        result: str | None = None, error: dict[str, Any] | None = None,
    ) -> bool:
        return bool(self._run("finish", job_id, owner, status, repr(now), repr(expires), result or "",
                              json.dumps(error) if error is not None else ""))

    def release(self, job_id: str, owner: str) -> bool:
        return bool(self._run("release", job_id, owner))

    def cancel(self, job_id: str, now: float, expires: float, error: dict[str, Any]) -> JobRecord | None:
        self._run("cancel", job_id, repr(now), repr(expires), json.dumps(error))
        return self.get(job_id)

    def recover(self, now: float, max_attempts: int, expires: float, error: dict[str, Any], *, everything: bool) -> tuple[int, int]:
        queued, failed = self._run("recover", repr(now), max_attempts, repr(expires), json.dumps(error), "1" if everything else "0")
        return int(queued), int(failed)

    def purge(self, now: float) -> int:
        return int(self._run("purge", repr(now)))

    def get(self, job_id: str) -> JobRecord | None:
        data = self._redis.hgetall(PREFIX + "job:" + job_id)
        return _record(data) if data else None

    def list(
        self, *, graph: str | None = None, status: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[JobRecord]:
        start = "-inf"
        if after is not None:
            seq = self._redis.zscore(PREFIX + "all", after)
            start = f"({int(seq)}" if seq is not None else "-inf"
        out: list[JobRecord] = []
        while len(out) < limit:
            ids = self._redis.zrangebyscore(PREFIX + "all", start, "+inf", start=0, num=_PAGE, withscores=True)
            if not ids:
                break
            pipe = self._redis.pipeline(transaction=False)
            for job_id, _ in ids:
                pipe.hmget(PREFIX + "job:" + job_id, _SUMMARY_FIELDS)
            for values in pipe.execute():
                data = {k: v for k, v in zip(_SUMMARY_FIELDS, values, strict=True) if v is not None}
                if not data or (graph is not None and data["graph"] != graph) or (status is not None and data["status"] != status):
                    continue
                out.append(_record(data))
                if len(out) == limit:
                    break
            start = f"({int(ids[-1][1])}"
        return out

    def stats(self, graphs: Sequence[str]) -> dict[str, Any]:
        pipe = self._redis.pipeline(transaction=False)
        for graph in graphs:
            pipe.zcard(PREFIX + "q:" + graph)
            pipe.zrange(PREFIX + "q:" + graph, 0, 0)
        pipe.zcard(PREFIX + "running")
        *per_graph, running = pipe.execute()
        queued = sum(per_graph[0::2])
        firsts = [ids[0] for ids in per_graph[1::2] if ids]
        created = [float(c) for c in (self._redis.hget(PREFIX + "job:" + i, "created") for i in firsts) if c]
        return {"queued": queued, "running": running, "oldest_created": min(created) if created else None}

    def close(self) -> None:
        self._redis.close()


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def _record(data: dict[str, str]) -> JobRecord:
    error = data.get("error")
    return JobRecord(
        id=data["id"], graph=data["graph"], payload=data.get("payload", ""), status=data["status"],
        attempts=int(data.get("attempts", 0)), created=float(data.get("created", 0.0)),
        started=_float(data.get("started")), finished=_float(data.get("finished")), result=data.get("result") or None,
        error=json.loads(error) if error else None, key=data.get("key") or None, owner=data.get("owner") or None,
        lease_until=_float(data.get("lease_until")), expires=_float(data.get("expires")), seq=int(data.get("seq", 0)),
    )
