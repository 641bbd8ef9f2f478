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

Two measures per system, from a client in this process (httpx, one event loop): time to first
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


async def one_stream(client: Any, url: str) -> tuple[float, int, float]:
    """(seconds to the first item, items, seconds to the end) of one stream."""
    start = time.perf_counter()
    first = None
    items = 0
    async with client.stream("POST", url, json={"n": ITEMS}, headers={"accept": "text/event-stream"}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: {}":
                items += 1
                if first is None:
                    first = time.perf_counter() - start
    return first or float("nan"), items, time.perf_counter() - start


async def wait_ready(url: str, limit_s: float = 600) -> float:
    import httpx

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=30) as client:
        while time.perf_counter() - start < limit_s:
            try:
                _, items, _ = await one_stream(client, url)
                if items == ITEMS:
                    return time.perf_counter() - start
            except (httpx.HTTPError, OSError):
                pass
            await asyncio.sleep(1)
    raise RuntimeError(f"{url} did not answer within {limit_s:g} s")


async def measure(url: str, ttfi_n: int, rounds: int) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for _ in range(5):  # warm up
            await one_stream(client, url)
        ttfi = [(await one_stream(client, url))[0] * 1000 for _ in range(ttfi_n)]
        await asyncio.gather(*(one_stream(client, url) for _ in range(CONCURRENCY)))  # warm up at width
        start = time.perf_counter()
        total = 0
        loaded_ttfi: list[float] = []
        for _ in range(rounds):
            done = await asyncio.gather(*(one_stream(client, url) for _ in range(CONCURRENCY)))
            total += sum(d[1] for d in done)
            loaded_ttfi += [d[0] * 1000 for d in done]
        elapsed = time.perf_counter() - start
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
