"""Cost as the graph grows: ``python -m benchmarks.scaling [--quick] [--systems dagserve serve] [--shapes fanout map]``.

For fan-out graphs of 1, 5 and 20 function nodes and for ``dagserve.map`` over 10, 100 and 1,000
items (``benchmarks/servers/scaling_graphs.py``), and the same graphs hand-written in Ray Serve
(``scaling_serve.py``), each in a fresh server process on a fresh local Ray:

* ``ready_s``: from the command (``python -m dagserve run module:graph``, or the Serve script) to
  the line saying it serves;
* ``first_ms``: the first request sent right after that line (a new connection, from a client that
  already sent one request elsewhere, so its own first-use costs are not counted);
* ``p50_ms`` / ``p99_ms``: later requests, one at a time (wrk, 1 connection), after a warm-up;
* ``overhead_us_per_unit``: p50 divided by the nodes (fan-out) or items (map): the request's cost
  per node or item, all of it overhead since every node does trivial work;
* ``rss_mb``: resident memory of every process the graph uses: the server and all its descendants
  (Ray's GCS, raylet and workers, the replicas), read with psutil once measured.

Records (workload ``scaling``) are appended to ``benchmarks/results/scaling.json``, replacing those
of the same system, shape and size; ``benchmarks.targets`` judges them and ``benchmarks.charts``
draws them. ``--quick``: 2 s of load, and only the smallest and the middle size of each shape
unless ``--sizes`` names some.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import launch, report, targets, wrk
from benchmarks.servers.scaling_graphs import FANOUT_SIZES, MAP_SIZES, body, expected

RESULTS = Path(__file__).resolve().parent / "results" / "scaling.json"
SIZES = {"fanout": FANOUT_SIZES, "map": MAP_SIZES}
READY_LIMIT_S = 300.0
STOP_TIMEOUT_S = 60.0


def command(system: str, shape: str, size: int, port: int) -> list[str]:
    if system == "dagserve":
        attr = f"{shape}_{size}"
        return [sys.executable, "-m", "dagserve", "run", f"benchmarks.servers.scaling_graphs:{attr}",
                "--backend", "ray", "--host", "127.0.0.1", "--port", str(port), "--no-admin"]
    return [sys.executable, "-m", "benchmarks.servers.scaling_serve", "--shape", shape, "--size", str(size),
            "--port", str(port)]


def _lines(stream: Any, into: queue.Queue[tuple[float, str]]) -> None:
    for raw in iter(stream.readline, b""):
        into.put((time.perf_counter(), raw.decode(errors="replace")))


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and every process below it, in MB."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def _post(port: int, payload: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/", payload, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _warm_client() -> None:
    """Send one request to a throwaway listener, so the first request timed pays none of the
    client's own first-use costs (an httpx client's first request alone took ~10 ms here)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")

        server = threading.Thread(target=answer, daemon=True)
        server.start()
        _post(listener.getsockname()[1], b"{}")
        server.join(timeout=10)


def first_request(port: int, payload: Any) -> tuple[int, Any, float]:
    """(status, answer, ms) of one request on a new connection, by a client already warmed up."""
    _warm_client()
    data = json.dumps(payload).encode()
    t = time.perf_counter()
    status, raw = _post(port, data)
    ms = (time.perf_counter() - t) * 1e3
    return status, json.loads(raw) if status == 200 else raw[:200], ms


def measure(system: str, shape: str, size: int, duration_s: float, log_dir: Path) -> report.Record:
    port = launch.free_port()
    argv = command(system, shape, size, port)
    log_path = log_dir / f"scaling-{system}-{shape}{size}.log"
    lines: queue.Queue[tuple[float, str]] = queue.Queue()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=launch.REPO_ROOT, stdout=subprocess.PIPE, stderr=open(log_path, "wb"),
                            stdin=subprocess.DEVNULL, start_new_session=True)
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        ready_at = None
        while ready_at is None:
            try:
                at, line = lines.get(timeout=1.0)
            except queue.Empty:
                if proc.poll() is not None or time.perf_counter() - started > READY_LIMIT_S:
                    raise launch.ServerError(f"{system} {shape}{size} never said it serves; log {log_path}:\n"
                                             f"{launch.log_tail(log_path)}") from None
                continue
            if line.startswith(("dagserve: serving", "ready on")):
                ready_at = at
        url = f"http://127.0.0.1:{port}/"
        status, answer, first_ms = first_request(port, body(shape, size))
        if status != 200 or answer != expected(shape, size):
            raise launch.ServerError(f"{system} {shape}{size} answered {status} {answer!r}")
        wrk.run(url, body(shape, size), connections=1, duration_s=1)
        result = wrk.run(url, body(shape, size), connections=1, duration_s=duration_s)
        memory = rss_mb(proc.pid)
    finally:
        launch.stop(proc, STOP_TIMEOUT_S)  # SIGTERM: a clean stop (the server shuts its Ray down)
    return {
        "workload": "scaling", "case": f"{shape}{size}", "system": system, "shape": shape, "size": size,
        "ready_s": round(ready_at - started, 3), "first_ms": round(first_ms, 3),
        "rps": round(result.rps, 2), "p50_ms": round(result.p50_ms, 3), "p99_ms": round(result.p99_ms, 3),
        "errors": result.errors, "concurrency": 1,
        "overhead_us_per_unit": round(result.p50_ms * 1e3 / size, 2), "rss_mb": round(memory, 1),
        "load_1m_before": round(os.getloadavg()[0], 2),
    }


def table(records: list[report.Record]) -> str:
    head = f"{'system':<9} {'case':<9} {'ready s':>8} {'first ms':>9} {'p50 ms':>8} {'p99 ms':>8} {'µs/unit':>8} {'RSS MB':>8}"
    lines = ["== scaling: cost as the graph grows (1 connection)", head]
    for r in records:
        if r.get("failed"):
            lines.append(f"{r['system']:<9} {r['case']:<9} failed: {r['note']}")
            continue
        lines.append(f"{r['system']:<9} {r['case']:<9} {r['ready_s']:>8.1f} {r['first_ms']:>9.2f} {r['p50_ms']:>8.2f} "
                     f"{r['p99_ms']:>8.2f} {r['overhead_us_per_unit']:>8.0f} {r['rss_mb']:>8.0f}")
    return "\n".join(lines)


def merge(path: Path, new: list[report.Record]) -> list[report.Record]:
    """``path``'s records with ``new`` replacing those of the same system and case."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = []
    keys = {(r["system"], r["case"]) for r in new}
    return [r for r in old if (r.get("system"), r.get("case")) not in keys] + new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s of load; smallest and middle sizes unless --sizes")
    parser.add_argument("--systems", nargs="+", choices=("dagserve", "serve"), default=["dagserve", "serve"])
    parser.add_argument("--shapes", nargs="+", choices=tuple(SIZES), default=list(SIZES))
    parser.add_argument("--sizes", nargs="+", type=int, help="only these sizes (of the shapes' own)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="dagserve-scaling-"))
    print(f"logs in {log_dir}", file=sys.stderr, flush=True)
    records: list[report.Record] = []
    for shape in args.shapes:
        sizes = SIZES[shape][:2] if args.quick and not args.sizes else SIZES[shape]
        for size in (s for s in sizes if not args.sizes or s in args.sizes):
            for system in args.systems:
                try:
                    rec = measure(system, shape, size, 2 if args.quick else 6, log_dir)
                except (launch.ServerError, wrk.WrkError, OSError, http.client.HTTPException) as exc:
                    rec = {"workload": "scaling", "case": f"{shape}{size}", "system": system, "shape": shape,
                           "size": size, "rps": None, "p50_ms": None, "p99_ms": None, "errors": None,
                           "concurrency": 1, "failed": True, "note": str(exc).splitlines()[0]}
                print(table([rec]).splitlines()[-1], file=sys.stderr, flush=True)
                records.append(rec)
    report.write_json(args.output, merge(args.output, records))
    print(table(records))
    print(targets.summary(merge(args.output, []), judges=(targets.scaling,)))
    return 1 if any(r.get("failed") for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
