"""The OpenAI route against dagserve's own: time to first token and tokens/s of one graph, both ways.

``python -m benchmarks.openai_bench [--backend ray|local] [--rounds 3] [--ttft-n 40]``

One server (``dagserve run benchmarks.openai_bench:chat``) serves the graph :data:`chat`
(``prepare`` -> ``tokens``: 100 text tokens 5 ms apart) at its own route, ``POST /`` as
Server-Sent Events, and as the OpenAI model ``bench`` at ``POST /v1/chat/completions`` with
``"stream": true``: the same App, the same generator. A client in this process
(:class:`benchmarks.stream_bench.Connection`, one keep-alive connection per concurrent stream)
alternates between the two routes so that both see the same machine load: time to first token
over ``--ttft-n`` streams one after the other, 20 ms apart (p50), and tokens/s with 32 streams
at once, 16 on each route (so that both see the same moment's load), over ``--rounds`` rounds.
Targets: the OpenAI route's time to first token at most 1.2x, its tokens/s at least 0.9x the
graph route's. Records go to ``benchmarks/results/openai.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dagserve
from benchmarks.stream_bench import CONCURRENCY, GAP_S, HOST, ITEMS, Connection, free_port, stop

RESULTS = Path(__file__).resolve().parent / "results" / "openai.json"
#: The targets (issue 29): OpenAI / graph route.
TTFT_MAX_RATIO = 1.2
TOKENS_MIN_RATIO = 0.9


@dagserve.node
def prepare(req: dict[str, Any]) -> dict[str, Any]:
    return dict(req)


@dagserve.node(max_ongoing_requests=1000)
async def tokens(req: dict[str, Any]) -> AsyncIterator[str]:
    for i in range(req.get("max_tokens") or ITEMS):
        yield f"t{i} "
        await asyncio.sleep(GAP_S)


with dagserve.Input() as inp:
    chat = dagserve.openai.chat(dagserve.Graph(tokens(prepare(inp)), name="openai_bench"), model="bench")

GRAPH_BODY = json.dumps({"max_tokens": ITEMS}).encode()
OPENAI_BODY = json.dumps(
    {"model": "bench", "stream": True, "max_tokens": ITEMS, "messages": [{"role": "user", "content": "go"}]}
).encode()


class OpenAIConnection(Connection):
    """:class:`Connection` reading OpenAI's stream: a chunk with content is an item, ``[DONE]`` the end."""

    @staticmethod
    def kind(event: bytes) -> str | None:
        if event.startswith(b"data: [DONE]"):
            return "end"
        if event.startswith(b'data: {"error"'):
            return "error"
        return "item" if b'"delta":{"content":"' in event and b'"content":""' not in event else None


async def _one(conn: Connection, body: bytes) -> tuple[float, int, float]:
    try:
        first, items, total = await conn.stream(body)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        # The server closed the kept-alive connection while the other route was measured
        # (uvicorn's keep-alive timeout, long on a loaded machine): once more on a new one.
        conn.close()
        first, items, total = await conn.stream(body)
    if items != ITEMS:
        raise RuntimeError(f"{conn.path}: {items} items, expected {ITEMS}")
    return first, items, total


async def measure(port: int, ttft_n: int, rounds: int) -> dict[str, Any]:
    """Both routes, interleaved: TTFT p50 (ms) one stream at a time, tokens/s at 32 streams."""
    routes = {"graph": (Connection, "/", GRAPH_BODY), "openai": (OpenAIConnection, "/v1/chat/completions", OPENAI_BODY)}
    conns = {name: [cls(HOST, port, path) for _ in range(CONCURRENCY)] for name, (cls, path, _) in routes.items()}
    ttft: dict[str, list[float]] = {name: [] for name in routes}
    items: dict[str, int] = dict.fromkeys(routes, 0)
    seconds: dict[str, float] = dict.fromkeys(routes, 0.0)
    try:
        for name, (_, _, body) in routes.items():  # warm up, one stream and then at width
            for _ in range(3):
                await _one(conns[name][0], body)
            await asyncio.gather(*(_one(c, body) for c in conns[name]))
        names = list(routes)
        for i in range(ttft_n):
            for name in names if i % 2 == 0 else names[::-1]:  # ABBA: neither route always goes first
                await asyncio.sleep(0.02)  # the last stream's wind-down is over: the first token alone is timed
                ttft[name].append((await _one(conns[name][0], routes[name][2]))[0] * 1000)
        half = CONCURRENCY // 2
        for _ in range(rounds):  # half the streams on each route, at once: both see the same moment's load
            start = time.perf_counter()

            async def group(name: str) -> None:
                done = await asyncio.gather(*(_one(c, routes[name][2]) for c in conns[name][:half]))
                seconds[name] += time.perf_counter() - start
                items[name] += sum(d[1] for d in done)

            await asyncio.gather(*(group(name) for name in routes))
    finally:
        for group in conns.values():
            for c in group:
                c.close()
    out: dict[str, Any] = {}
    for name in routes:
        out[f"{name}_ttft_p50_ms"] = round(statistics.median(ttft[name]), 2)
        out[f"{name}_tokens_per_s_at_16"] = round(items[name] / seconds[name], 1)
    out["ttft_ratio"] = round(out["openai_ttft_p50_ms"] / out["graph_ttft_p50_ms"], 3)
    out["tokens_per_s_ratio"] = round(out["openai_tokens_per_s_at_16"] / out["graph_tokens_per_s_at_16"], 3)
    out["meets_targets"] = out["ttft_ratio"] <= TTFT_MAX_RATIO and out["tokens_per_s_ratio"] >= TOKENS_MIN_RATIO
    return out


async def wait_ready(port: int, limit_s: float = 600) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        conn = OpenAIConnection(HOST, port, "/v1/chat/completions")
        try:
            await asyncio.wait_for(_one(conn, OPENAI_BODY), 30)
            return time.perf_counter() - start
        except (OSError, RuntimeError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            conn.close()
        await asyncio.sleep(1)
    raise RuntimeError(f"port {port} did not answer within {limit_s:g} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("ray", "local"), default="ray")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttft-n", type=int, default=40)
    args = parser.parse_args(argv)
    port = free_port()
    cmd = [sys.executable, "-m", "dagserve", "run", "benchmarks.openai_bench:chat", "--backend", args.backend,
           "--host", HOST, "--port", str(port), "--no-admin"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        ready_s = asyncio.run(wait_ready(port))
        load = os.getloadavg()[0]
        record = {"backend": args.backend, **asyncio.run(measure(port, args.ttft_n, args.rounds))}
        record.update(ready_s=round(ready_s, 1), load_1m_before=round(load, 2))
    finally:
        stop(proc)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "conditions": f"one graph, {ITEMS} tokens {GAP_S * 1000:g} ms apart, served by dagserve run "
        f"--backend {args.backend}; routes interleaved; TTFT over {args.ttft_n} sequential streams each; "
        f"tokens/s over {args.rounds} rounds of {CONCURRENCY} concurrent streams, half on each route",
        "targets": {"ttft_ratio_max": TTFT_MAX_RATIO, "tokens_per_s_ratio_min": TOKENS_MIN_RATIO},
        "records": [record],
    }, indent=2) + "\n")
    print(json.dumps(record), flush=True)
    return 0 if record["meets_targets"] else 1


if __name__ == "__main__":
    sys.exit(main())
