"""``make chaos`` (jobs): 2,000 jobs, the server SIGKILLed twice while they run and restarted on the
same store, on SQLite and on Redis: how many succeeded, how many were lost, how many ran twice.

::

    python -m benchmarks.job_chaos                         # 2,000 jobs, SQLite then Redis
    python -m benchmarks.job_chaos --jobs 200 --stores sqlite

One ``dagserve run benchmarks.job_chaos:graph --backend local`` on 127.0.0.1 (Redis: a
``redis-server`` started here in a temporary directory, ``--jobs-lease 2`` so that a killed
server's jobs come back quickly). Each run of a job appends the job's id to a log file, so that runs
per job are counted from outside the server. The driver submits every job over HTTP, SIGKILLs the
server once a third and again once two thirds of the jobs ran, restarts it each time on the same
store, and waits for every job to finish. Results go to ``benchmarks/results/jobs-chaos.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dagserve
from benchmarks.chaos import HttpClient
from benchmarks.dagserve_run import DagserveRun
from benchmarks.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "jobs-chaos.json"
RUN_LOG_ENV = "DAGSERVE_CHAOS_RUN_LOG"
#: Each job's work: long enough that many jobs run at once when the server is killed.
JOB_SECONDS = 0.2
CONCURRENCY = 32
DEADLINE_S = 600.0


@dagserve.node
async def work(payload: dict) -> dict:
    with open(os.environ[RUN_LOG_ENV], "a", encoding="utf-8") as log:
        log.write(dagserve.current_request_id() + "\n")
    await asyncio.sleep(float(payload.get("sleep", JOB_SECONDS)))
    return {"n": payload["n"] * 2}


with dagserve.Input() as inp:
    graph = dagserve.Graph(work(inp), name="chaos")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start(port: int, store_args: list[str], run_log: Path, out: Path) -> DagserveRun:
    return DagserveRun("benchmarks.job_chaos:graph", port, "--jobs-concurrency", str(CONCURRENCY), *store_args,
                       out=out, env={RUN_LOG_ENV: str(run_log)}, ready_timeout_s=60)


def runs(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


async def _each(port: int, items: list[Any], call: Any) -> list[Any]:
    """``call(client, item)`` for every item over 16 kept-alive connections (benchmarks/chaos.py's
    client: httpx costs more CPU per request than this 2-core machine can spare next to the server)."""
    client = HttpClient(port, max_connections=16, timeout_s=60)
    try:
        return list(await asyncio.gather(*(call(client, item) for item in items)))
    finally:
        await client.close()


async def submit_all(port: int, n: int) -> list[str]:
    async def one(client: HttpClient, i: int) -> str:
        status, _, body = await client.request("POST", "/jobs", {"n": i})
        if status != 202:
            raise RuntimeError(f"submitting job {i} answered {status}: {body[:200]!r}")
        return str(json.loads(body)["id"])

    return await _each(port, list(range(n)), one)


async def statuses(port: int, ids: list[str]) -> list[dict[str, Any]]:
    async def one(client: HttpClient, job_id: str) -> dict[str, Any]:
        status, _, body = await client.request("GET", f"/-/jobs/{job_id}")
        return dict(json.loads(body)) if status == 200 else {"id": job_id, "status": "missing"}

    return await _each(port, ids, one)


def scenario(store: str, n: int, directory: Path) -> dict[str, Any]:
    run_log, out, port = directory / "runs.log", directory / "server.log", free_port()
    with contextlib.ExitStack() as stack:
        if store == "redis":
            store_args = ["--jobs-store", stack.enter_context(RedisServer(directory)), "--jobs-lease", "2"]
        else:
            store_args = ["--jobs-db", str(directory / "jobs.sqlite3")]
        started = time.monotonic()
        server = start(port, store_args, run_log, out)
        try:
            submitting = time.monotonic()
            ids = asyncio.run(submit_all(port, n))
            ran = sum(runs(run_log).values())
            log(f"[{store}] {n} jobs submitted in {time.monotonic() - submitting:.1f} s ({ran} ran meanwhile)")
            for kill, fraction in enumerate((1 / 3, 2 / 3), start=1):
                while sum(runs(run_log).values()) < ran + (n - ran) * fraction:
                    if time.monotonic() - started > DEADLINE_S:
                        raise RuntimeError("jobs stopped running")
                    time.sleep(0.02)
                server.kill()
                log(f"[{store}] SIGKILL {kill} after {sum(runs(run_log).values())} runs; restarting on the same store")
                server = start(port, store_args, run_log, out)
            while True:
                records = asyncio.run(statuses(port, ids))
                if all(r["status"] not in ("queued", "running") for r in records):
                    break
                if time.monotonic() - started > DEADLINE_S:
                    break
                time.sleep(0.5)
        finally:
            server.stop()
    counted = runs(run_log)
    by_status = Counter(r["status"] for r in records)
    return {
        "store": store, "jobs": n, "kills": 2, "succeeded": by_status.get("succeeded", 0),
        "lost": n - sum(by_status[s] for s in ("succeeded", "failed", "cancelled")),
        "failed": by_status.get("failed", 0), "never_ran": sum(1 for i in ids if i not in counted),
        "duplicates": sum(1 for i in ids if counted[i] > 1), "runs": sum(counted.values()),
        "max_attempts_seen": max((r.get("attempts", 0) for r in records), default=0),
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.job_chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per store (default 2000)")
    parser.add_argument("--stores", default="sqlite,redis", help="comma-separated: sqlite, redis")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = []
    for store in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix=f"dagserve-job-chaos-{store}-") as tmp:
            result = scenario(store.strip(), args.jobs, Path(tmp))
        results.append(result)
        log(f"[{store}] {result}")
    print(f"{'store':<8}{'jobs':>7}{'succeeded':>11}{'lost':>6}{'failed':>8}{'duplicates':>12}{'runs':>7}{'seconds':>9}")
    for r in results:
        print(f"{r['store']:<8}{r['jobs']:>7}{r['succeeded']:>11}{r['lost']:>6}{r['failed']:>8}{r['duplicates']:>12}"
              f"{r['runs']:>7}{r['seconds']:>9}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"results": results, "load_1m": round(os.getloadavg()[0], 2)}, indent=2) + "\n")
    return 0 if all(r["lost"] == 0 and r["succeeded"] == r["jobs"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
