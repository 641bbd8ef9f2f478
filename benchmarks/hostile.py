"""What hostile clients cost a dagserve server, measured on this machine (docs/reliability.md).

::

    python -m benchmarks.hostile          # about 30 s; 127.0.0.1 only; prints a table

One server process (``dagserve run benchmarks.hostile:GRAPHS --backend local``, with its
defaults: 127.0.0.1, no token, so the Host check is on) and this driver, which measures:

* **slow JSON**: the CPU time ``parse_json`` spends refusing 101 ``[`` and an unterminated string
  of escaped quotes (the shape of issue 15) at 64 KB, 1 MB and 10 MB, in this process; and the
  latency of normal requests sent while another connection posts such 1 MB bodies back to back.
* **413**: urllib posting 11 MiB (over the 10 MiB limit): does it read the 413?
* **hang-up**: a client posts to a node that sleeps 2 s and closes its socket after 0.2 s: how
  long the node ran before it was cancelled.
* **foreign Host**: requests with ``Host: rebound.example`` (DNS rebinding): how many are refused.

Every loop is bounded and only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

import dagserve

REPO_ROOT = Path(__file__).resolve().parent.parent
JSON = {"content-type": "application/json"}
SLEEP_S = 2.0


# -- the served graphs ---------------------------------------------------------------------------------


@dagserve.node
async def size(payload: Any) -> int:
    return len(json.dumps(payload))


@dagserve.node
class Sleeper:
    """Sleeps ``seconds`` and records how long its last call ran and how it ended."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {}

    async def __call__(self, seconds: float) -> float:
        start = time.perf_counter()
        self.last = {"state": "running"}
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.last = {"state": "cancelled", "ran_s": time.perf_counter() - start}
            raise
        self.last = {"state": "finished", "ran_s": time.perf_counter() - start}
        return seconds

    def report(self, seconds: float) -> dict[str, Any]:
        return self.last


def _sleeper_graph() -> dagserve.Graph:
    sleeper = Sleeper()
    with dagserve.Input() as inp:
        out = dagserve.switch(
            inp["case"], {"run": sleeper(inp["seconds"]), "report": sleeper.report(inp["seconds"])}
        )
    return dagserve.Graph(out, name="sleeper")


GRAPHS = [dagserve.Graph(size, name="size"), _sleeper_graph()]


# -- the driver -------------------------------------------------------------------------------------------


def escaped_quotes(n: int) -> bytes:
    """101 '[' then an unterminated string of ``n`` escaped quotes (2n + 102 bytes)."""
    return b"[" * 101 + b'"' + b'\\"' * n


def parse_cost() -> dict[str, float]:
    """CPU seconds (best of 5) parse_json spends refusing each size."""
    from dagserve.http.jsonio import JSONBodyError, parse_json

    out = {}
    for label, n in (("64 KB", 32_000), ("1 MB", 512_000), ("10 MB", 5_000_000)):
        body = escaped_quotes(n)
        costs = []
        for _ in range(5):
            start = time.thread_time()
            try:
                parse_json(body)
            except JSONBodyError:
                pass
            costs.append(time.thread_time() - start)
        out[label] = min(costs)
    return out


@contextmanager
def server() -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSERVE_TOKEN", "DAGSERVE_ADMIN_TOKEN")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve", "run", "benchmarks.hostile:GRAPHS", "--backend", "local", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            found = re.search(r"http://127\.0\.0\.1:\d+/", line) if line.startswith("dagserve: serving") else None
            if found:
                yield found.group(0)
                break
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def latencies(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(n):
            start = time.perf_counter()
            assert c.post("/size", json={"i": i}).status_code == 200
            out.append(time.perf_counter() - start)
    return out


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def under_slow_json(url: str) -> dict[str, Any]:
    latencies(url, 50)  # warm up
    alone = latencies(url, 300)
    stop = threading.Event()
    refused: list[int] = []

    def post_hostile() -> None:
        body = escaped_quotes(512_000)
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set() and len(refused) < 10_000:
                refused.append(c.post("/size", content=body, headers=JSON).status_code)

    t = threading.Thread(target=post_hostile)
    t.start()
    try:
        loaded = latencies(url, 300)
    finally:
        stop.set()
        t.join(60)
    return {
        "alone_p50_ms": statistics.median(alone) * 1e3,
        "alone_p99_ms": p99(alone) * 1e3,
        "loaded_p50_ms": statistics.median(loaded) * 1e3,
        "loaded_p99_ms": p99(loaded) * 1e3,
        "hostile_sent": len(refused),
        "hostile_statuses": sorted(set(refused)),
    }


def too_large(url: str) -> dict[str, Any]:
    body = b" " * (11 * 1024 * 1024)
    request = urllib.request.Request(url + "size", data=body, headers=JSON)
    start = time.perf_counter()
    try:
        urllib.request.urlopen(request, timeout=60)
        seen: Any = 200
    except urllib.error.HTTPError as exc:
        seen = exc.code
    except OSError as exc:  # the connection reset before the answer
        seen = type(exc).__name__
    return {"seen": seen, "ms": (time.perf_counter() - start) * 1e3}


def hang_up(url: str) -> dict[str, Any]:
    host, port = url.split("//")[1].rstrip("/").split(":")
    body = json.dumps({"case": "run", "seconds": SLEEP_S}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /sleeper HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        time.sleep(0.2)
    time.sleep(SLEEP_S + 0.5)  # past the moment the node would have finished
    report = httpx.post(url + "sleeper", json={"case": "report", "seconds": 0}, timeout=10).json()
    return {"state": report.get("state"), "ran_ms": report.get("ran_s", 0.0) * 1e3}


def foreign_host(url: str) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=10) as c:
        statuses = [c.post("/size", json={}, headers={"host": "rebound.example"}).status_code for _ in range(100)]
    return {"sent": len(statuses), "refused_403": statuses.count(403)}


def main() -> int:
    started = time.perf_counter()
    cost = parse_cost()
    with server() as url:
        slow = under_slow_json(url)
        large = too_large(url)
        gone = hang_up(url)
        host = foreign_host(url)
    ratio = cost["1 MB"] / cost["64 KB"]
    print("| attack | measured |")
    print("|---|---|")
    print(
        f"| slow JSON: parse_json refusing 64 KB / 1 MB / 10 MB | {cost['64 KB'] * 1e3:.2f} / "
        f"{cost['1 MB'] * 1e3:.1f} / {cost['10 MB'] * 1e3:.0f} ms of CPU; 1 MB / 64 KB = {ratio:.1f}x |"
    )
    print(
        f"| slow JSON: normal requests while 1 MB bodies are posted back to back | p50 "
        f"{slow['alone_p50_ms']:.2f} -> {slow['loaded_p50_ms']:.2f} ms, p99 {slow['alone_p99_ms']:.2f} -> "
        f"{slow['loaded_p99_ms']:.2f} ms; {slow['hostile_sent']} hostile bodies answered "
        f"{slow['hostile_statuses']} |"
    )
    print(f"| 11 MiB body from urllib | urllib saw {large['seen']} after {large['ms']:.0f} ms |")
    print(f"| hang-up during a {SLEEP_S:g} s node | the node was {gone['state']} after {gone['ran_ms']:.0f} ms |")
    print(f"| foreign Host (DNS rebinding) | {host['refused_403']} of {host['sent']} refused with 403 |")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
