"""Offline throughput: ``App.map`` against one request at a time, on the same graph.

``python -m benchmarks.offline_bench [--n 100000] [--backend ray|local] [--concurrency 128] [--batch-wait-ms MS]``

The graph is one batched model node doing trivial work, so the figure is dagserve's and the
backend's per-payload overhead, and what batching plus concurrency buy over it. ``App.map`` runs
all ``--n`` payloads; the sequential baseline (``app.call`` in a loop, the way a naive backfill
script would) runs ``--sequential-n`` of them (default: up to 3,000) because at one request at a
time the full 100,000 would take minutes while its rate is steady after a few hundred. Both are
warmed up first.

The node's ``batch_wait_timeout_s`` is dagserve's default (10 ms) unless ``--batch-wait-ms`` says
otherwise. It matters for the baseline: one request at a time, every call waits that long for a
batch that never fills, so the ratio grows with it; run a short wait too to see the ratio without
most of that effect. Records go to ``benchmarks/results/offline.json``, replacing earlier ones
for the same backend and wait.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import dagserve

RESULTS = Path(__file__).resolve().parent / "results" / "offline.json"


MAX_BATCH_SIZE = 64


@dagserve.node(max_batch_size=MAX_BATCH_SIZE)
class Echo:
    """A batched model node with trivial work; each result says how large its batch was."""

    async def __call__(self, xs: list[int]) -> list[tuple[int, int]]:
        n = len(xs)
        return [(x, n) for x in xs]


def build_graph(batch_wait_s: float | None) -> dagserve.Graph:
    echo = Echo() if batch_wait_s is None else Echo.options(batch_wait_timeout_s=batch_wait_s)()
    with dagserve.Input() as inp:
        return dagserve.Graph(echo(inp), name="offline_bench")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(app: dagserve.App, n: int, sequential_n: int, concurrency: int) -> dict[str, Any]:
    for x in range(200):  # warm both paths: replicas, handles, the App's loop
        app.call(x)
    list(app.map(range(2_000), concurrency=concurrency))

    start = time.perf_counter()
    sizes = 0
    failed = 0
    count = 0
    for out in app.map(range(n), concurrency=concurrency):  # a lazy range: nothing materialised
        if isinstance(out, Exception):
            failed += 1
            continue
        count += 1
        sizes += out[1]
    map_s = time.perf_counter() - start
    log(f"  App.map      {n:>7,} payloads in {map_s:7.2f} s = {n / map_s:9,.0f} payloads/s  (failed {failed})")

    start = time.perf_counter()
    for x in range(sequential_n):
        app.call(x)
    seq_s = time.perf_counter() - start
    log(f"  app.call x1  {sequential_n:>7,} payloads in {seq_s:7.2f} s = {sequential_n / seq_s:9,.0f} payloads/s")

    map_rps = n / map_s
    seq_rps = sequential_n / seq_s
    return {
        "n": n,
        "concurrency": concurrency,
        "max_batch_size": MAX_BATCH_SIZE,
        "batch_wait_timeout_s": app.plan.deployment("Echo").options.batch_wait_timeout_s,
        "map_seconds": round(map_s, 3),
        "map_rps": round(map_rps, 1),
        "map_failed": failed,
        "mean_batch_size": round(sizes / count, 2) if count else None,
        "sequential_n": sequential_n,
        "sequential_seconds": round(seq_s, 3),
        "sequential_rps": round(seq_rps, 1),
        "ratio": round(map_rps / seq_rps, 2),
        "target_ratio": 5.0,
        "meets_target": map_rps / seq_rps >= 5.0,
    }


def deploy(backend: str, batch_wait_s: float | None) -> dagserve.App:
    # On Ray, dagserve starts a private local Ray (loopback only, throughput-optimized Serve) and
    # stops it at shutdown, as it does for a user who calls deploy(graph, backend="ray").
    return dagserve.deploy(build_graph(batch_wait_s), backend=backend)


def save(record: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    if RESULTS.exists():
        key = (record["backend"], record["batch_wait_timeout_s"])
        old = json.loads(RESULTS.read_text())
        records = [r for r in old if (r.get("backend"), r.get("batch_wait_timeout_s")) != key]
    records.append(record)
    RESULTS.write_text(json.dumps(records, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="payloads through App.map")
    parser.add_argument("--sequential-n", type=int, default=None, help="payloads through app.call one at a time")
    parser.add_argument("--backend", choices=["ray", "local"], default="ray")
    # The node's max_ongoing_requests (2 x max_batch_size): more would queue in Serve's router.
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--batch-wait-ms", type=float, default=None, help="the node's batch_wait_timeout_s, in ms")
    args = parser.parse_args(argv)
    sequential_n = args.sequential_n or min(args.n, 3_000)

    load_before = os.getloadavg()[0]
    log(f"offline benchmark: backend={args.backend} n={args.n:,} concurrency={args.concurrency}")
    t0 = time.perf_counter()
    app = deploy(args.backend, None if args.batch_wait_ms is None else args.batch_wait_ms / 1000)
    log(f"  deployed in {time.perf_counter() - t0:.1f} s")
    try:
        record = measure(app, args.n, sequential_n, args.concurrency)
    finally:
        app.shutdown()
    record = {
        "benchmark": "offline",
        "backend": args.backend,
        **record,
        "cpus": os.cpu_count(),
        # Other work on the machine skews the figures; the load average says how much there was.
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save(record)
    log(f"  ratio {record['ratio']}x (target >= 5x); mean batch {record['mean_batch_size']}; written to {RESULTS}")


if __name__ == "__main__":
    main()
