"""``make bench`` (jobs): submitting a job vs running the graph's own route, on SQLite.

::

    python -m benchmarks.job_bench                   # 6 s per measurement, local backend
    python -m benchmarks.job_bench --duration 2      # a smoke run

One ``dagserve run examples.quickstart:graph --backend local`` with a SQLite jobs file in a
temporary directory serves both; wrk (one connection per client, 16 at once) posts the same
payload to ``POST /`` (the graph route) and to ``POST /jobs`` (a job, answered 202 once stored).
The worker runs the submitted jobs meanwhile, on the same machine, as it would in production.
The target is submissions at >= 0.5x the graph route's requests per second. Results go to
``benchmarks/results/jobs.json``. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks import wrk
from benchmarks.dagserve_run import DagserveRun
from benchmarks.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "jobs.json"
PAYLOAD = {"text": "What a GREAT film", "lang": "en"}
TARGET = 0.5


@contextlib.contextmanager
def server(directory: Path) -> Iterator[str]:
    """``dagserve run`` on a free port with its jobs in ``directory``; yields the base URL."""
    run = DagserveRun("examples.quickstart:graph", free_port(), "--jobs-db", str(directory / "jobs.sqlite3"),
                      out=directory / "server.log", ready_timeout_s=60)
    try:
        yield run.url
    finally:
        run.stop()


def measure(url: str, duration_s: float, connections: int) -> dict[str, float]:
    wrk.run(url, PAYLOAD, connections=connections, duration_s=1)  # warm-up
    result = wrk.run(url, PAYLOAD, connections=connections, duration_s=duration_s)
    return {"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "errors": result.errors,
            "requests": result.requests}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.job_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement (default 6)")
    parser.add_argument("--connections", type=int, default=16, help="connections at once (default 16)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dagserve-job-bench-") as tmp:
        with server(Path(tmp)) as url:
            route = measure(url + "/", args.duration, args.connections)
        with server(Path(tmp)) as url:  # a fresh server on the same file
            submit = measure(url + "/jobs", args.duration, args.connections)
    ratio = submit["rps"] / route["rps"] if route["rps"] else 0.0
    record = {
        "graph route": route, "submit (SQLite)": submit, "ratio": round(ratio, 3), "target": TARGET,
        "met": ratio >= TARGET, "duration_s": args.duration, "connections": args.connections,
        "load_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), "python": platform.python_version(),
    }
    print(f"graph route   {route['rps']:9.1f} req/s  p50 {route['p50_ms']:7.2f} ms  p99 {route['p99_ms']:7.2f} ms  errors {route['errors']:.0f}")
    print(f"submit (SQL)  {submit['rps']:9.1f} req/s  p50 {submit['p50_ms']:7.2f} ms  p99 {submit['p99_ms']:7.2f} ms  errors {submit['errors']:.0f}")
    print(f"submit / route: {ratio:.2f}x (target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
