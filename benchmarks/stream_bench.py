"""Streaming: time to first item and items/s through dagserve, against the floor and Ray Serve.

``python -m benchmarks.stream_bench [--systems floor serve dagserve] [--rounds 3] [--ttfi-n 50]``

The work is one generator yielding 100 items 5 ms apart (:func:`tokens`), served as Server-Sent
Events by three systems, each in its own process on 127.0.0.1:

* ``floor``: the generator called in-process by one Starlette app on uvicorn (no graph, no Ray);
* ``serve``: a hand-written Ray Serve deployment returning a streaming response through Serve's
  HTTP proxy (the generator in the replica);
* ``dagserve``: the three-node graph :data:`graph` (``prepare`` -> ``tokens`` -> ``relay``, the
  generator in the middle, read by a node that streams too) on the Ray backend with its default
  transport, served by ``dagserve run``.

Two measures per system, from a client in this process (:class:`Connection`: raw asyncio
HTTP/1.1, one event loop, one keep-alive connection per concurrent stream): time to first
item (TTFI) over ``--ttfi-n`` streams one after the other (p50, p99), and items/s with 32 streams
at once for ``--rounds`` rounds. Records go to ``benchmarks/results/stream.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dagserve

RESULTS = Path(__file__).resolve().parent / "results" / "stream.json"
HOST = "127.0.0.1"
ITEMS = 100
GAP_S = 0.005
CONCURRENCY = 32


async def tokens(req: dict[str, Any]) -> AsyncIterator[int]:
    """The generator every system serves: ``ITEMS`` items, ``GAP_S`` apart."""
    for i in range(req.get("n", ITEMS)):
        yield i
        await asyncio.sleep(GAP_S)


@dagserve.node
def prepare(req: dict[str, Any]) -> dict[str, Any]:
    return dict(req)


@dagserve.node(name="tokens", max_ongoing_requests=1000)
async def tokens_node(req: dict[str, Any]) -> AsyncIterator[int]:
    async for i in tokens(req):
        yield i


@dagserve.node(max_ongoing_requests=1000)
async def relay(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for i in items:
        yield i


with dagserve.Input() as inp:
    graph = dagserve.Graph(relay(tokens_node(prepare(inp))), name="stream_bench")


async def events(body: dict[str, Any]) -> AsyncIterator[bytes]:
    """The floor's and Serve's answer: the generator's items as Server-Sent Events."""
    async for i in tokens(body):
        yield b"data: " + json.dumps(i).encode() + b"\n\n"
    yield b"event: end\ndata: {}\n\n"


# -- the servers (each run as `python -m benchmarks.stream_bench --serve NAME --port P`) ---------------


def serve_floor(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def endpoint(request: Request) -> StreamingResponse:
        return StreamingResponse(events(await request.json()), media_type="text/event-stream")

    app = Starlette(routes=[Route("/", endpoint, methods=["POST"])])
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


def serve_ray_serve(port: int) -> None:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import StreamingResponse

    from benchmarks.servers.ray_runtime import start_ray

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    class Tokens:
        async def __call__(self, request: Request) -> StreamingResponse:
            return StreamingResponse(events(await request.json()), media_type="text/event-stream")

    start_ray()
    serve.start(http_options={"host": HOST, "port": port})
    serve.run(Tokens.bind(), route_prefix="/", name="stream_bench")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


def start(system: str, port: int) -> subprocess.Popen[bytes]:
    if system == "dagserve":
        cmd = [sys.executable, "-m", "dagserve", "run", "benchmarks.stream_bench:graph", "--backend", "ray",
               "--host", HOST, "--port", str(port)]
    else:
        cmd = [sys.executable, "-m", "benchmarks.stream_bench", "--serve", system, "--port", str(port)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- the client ------------------------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection reading Server-Sent Events: a few lines of asyncio, so
    the measuring client spends far less of the machine's 2 cores than httpx would (the servers
    measured share them). Every system is measured with it."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def stream(self, body: bytes) -> tuple[float, int, float]:
        """(seconds to the first item, items, seconds to the end) of one stream."""
        if self._conn is None:
            self._conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._conn
        start = time.perf_counter()
        writer.write(
            f"POST {self.path} HTTP/1.1\r\nhost: {self.host}\r\naccept: text/event-stream\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError(f"answer {head.partition(CRLF)[0]!r}")
        if b"transfer-encoding: chunked" not in head.lower():
            raise OSError("not a chunked stream")
        first = None
        pending = b""
        items = 0
        ended = False
        while not ended:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            chunk = (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
            pending += chunk
            *events, pending = pending.split(b"\n\n")
            for event in events:
                kind = self.kind(event)
                if kind == "item":
                    items += 1
                    if first is None:
                        first = time.perf_counter() - start
                elif kind == "end":
                    ended = True
                elif kind == "error":
                    raise OSError(f"stream failed: {event!r}")
        if ended:  # the answer's last chunk (size 0) follows the end event
            await reader.readuntil(b"\r\n\r\n")
        return first if first is not None else float("nan"), items, time.perf_counter() - start

    @staticmethod
    def kind(event: bytes) -> str | None:
        """What one event of the stream is: ``item``, ``end``, ``error`` or ``None`` (dagserve's SSE)."""
        if event.startswith(b"data: "):
            return "item"
        if event.startswith(b"event: end"):
            return "end"
        return "error" if event.startswith(b"event: error") else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None


def _split(url: str) -> tuple[str, int, str]:
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    return host, int(port), "/" + path


CRLF = b"\r\n"
BODY = json.dumps({"n": ITEMS}).encode()


async def wait_ready(url: str, limit_s: float = 600) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        conn = Connection(*_split(url))
        try:
            _, items, _ = await asyncio.wait_for(conn.stream(BODY), 30)
            if items == ITEMS:
                return time.perf_counter() - start
        except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            conn.close()
        await asyncio.sleep(1)
    raise RuntimeError(f"{url} did not answer within {limit_s:g} s")


async def measure(url: str, ttfi_n: int, rounds: int) -> dict[str, Any]:
    conns = [Connection(*_split(url)) for _ in range(CONCURRENCY)]
    try:
        one = conns[0]
        for _ in range(5):  # warm up
            await one.stream(BODY)
        ttfi = [(await one.stream(BODY))[0] * 1000 for _ in range(ttfi_n)]
        await asyncio.gather(*(c.stream(BODY) for c in conns))  # warm up at width
        start = time.perf_counter()
        total = 0
        loaded_ttfi: list[float] = []
        for _ in range(rounds):
            done = await asyncio.gather(*(c.stream(BODY) for c in conns))
            total += sum(d[1] for d in done)
            loaded_ttfi += [d[0] * 1000 for d in done]
        elapsed = time.perf_counter() - start
    finally:
        for c in conns:
            c.close()
    if total != rounds * CONCURRENCY * ITEMS:
        raise RuntimeError(f"{url}: {total} items, expected {rounds * CONCURRENCY * ITEMS}")
    q = statistics.quantiles(ttfi, n=100)
    return {
        "ttfi_p50_ms": round(statistics.median(ttfi), 2),
        "ttfi_p99_ms": round(q[98], 2),
        "ttfi_p50_ms_at_32": round(statistics.median(loaded_ttfi), 2),
        "items_per_s_at_32": round(total / elapsed, 1),
        "items": total,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=("floor", "serve"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--systems", nargs="+", default=["floor", "serve", "dagserve"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttfi-n", type=int, default=50)
    args = parser.parse_args(argv)
    if args.serve == "floor":
        serve_floor(args.port)
        return 0
    if args.serve == "serve":
        serve_ray_serve(args.port)
        return 0
    records = []
    for system in args.systems:
        port = free_port()
        proc = start(system, port)
        url = f"http://{HOST}:{port}/"
        try:
            ready_s = asyncio.run(wait_ready(url))
            load = os.getloadavg()[0]
            rec = {"system": system, **asyncio.run(measure(url, args.ttfi_n, args.rounds))}
            rec.update(ready_s=round(ready_s, 1), load_1m_before=round(load, 2))
        finally:
            stop(proc)
        print(json.dumps(rec), flush=True)
        records.append(rec)
    floor = next((r for r in records if r["system"] == "floor"), None)
    for r in records:
        if floor is not None and r is not floor:
            r["ttfi_overhead_p50_ms"] = round(r["ttfi_p50_ms"] - floor["ttfi_p50_ms"], 2)
            r["items_per_s_vs_floor"] = round(r["items_per_s_at_32"] / floor["items_per_s_at_32"], 3)
    RESULTS.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "conditions": f"{ITEMS} items {GAP_S * 1000:g} ms apart; TTFI over {args.ttfi_n} sequential streams; "
        f"items/s over {args.rounds} rounds of {CONCURRENCY} concurrent streams",
        "records": records,
    }, indent=2) + "\n")
    for r in records:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
