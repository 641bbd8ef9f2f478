"""Tiny importable graphs shared by the executor, backend and parity tests.

Each builder returns a fresh ``Graph``; counters live on module-level objects so tests can check
what ran. Node code is deliberately trivial: the tests are about dataflow, not models.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

from pydantic import BaseModel

import dagserve

CALLS: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()


def record(name: str) -> None:
    with _lock:
        CALLS[name] += 1


@dagserve.node
def pre(x: int) -> int:
    return x + 1


@dagserve.node
class Scale:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, x: int) -> int:
        return x * self.factor

    async def offset(self, x: int) -> int:
        return x + self.factor


@dagserve.node
def post(x: int) -> dict[str, int]:
    return {"y": x}


@dagserve.node
async def slow(x: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return x


@dagserve.node
async def timed(x: int, seconds: float) -> list[float]:
    """Sleeps and answers when it started and ended (wall clock: comparable across processes)."""
    start = time.time()
    await asyncio.sleep(seconds)
    return [start, time.time()]


def overlapped(spans: list[list[float]]) -> bool:
    """Whether every span was running at one moment: concurrency shown by order, not by speed."""
    return max(s[0] for s in spans) < min(s[1] for s in spans)


@dagserve.node
def combine(parts: list[int]) -> int:
    return sum(parts)


@dagserve.node
def counted(x: int, tag: str) -> int:
    # Records that it ran (only in-process backends share this counter with the test).
    record(tag)
    return x


@dagserve.node
def fail(x: int) -> int:
    raise ValueError(f"bad value {x}")


@dagserve.node(max_batch_size=8, batch_wait_timeout_s=0.05)
async def batch_double(xs: list[int]) -> list[int]:
    await asyncio.sleep(0.01)
    return [2 * x for x in xs]


@dagserve.node(max_batch_size=8, batch_wait_timeout_s=0.05)
async def batch_size(xs: list[int]) -> list[int]:
    """Answers each request with the size of the batch it ran in."""
    await asyncio.sleep(0.01)
    return [len(xs)] * len(xs)


@dagserve.node(max_batch_size=4)
async def batch_wrong_length(xs: list[int]) -> list[int]:
    return xs[:-1]


class Req(BaseModel):
    x: int
    route: str = "a"


def chain() -> dagserve.Graph:
    return dagserve.Graph(pre >> Scale(3) >> post, name="chain")


def fan_out(seconds: float = 0.3) -> dagserve.Graph:
    with dagserve.Input() as inp:
        x = pre(inp["x"])
        out = combine([slow(x, seconds), slow(x, seconds)])
    return dagserve.Graph({"sum": out, "x": x}, name="fan_out")


def overlapping(seconds: float = 0.3) -> dagserve.Graph:
    """Two independent branches; each answers its own [start, end]."""
    with dagserve.Input() as inp:
        x = pre(inp["x"])
        out = [timed(x, seconds), timed(x, seconds)]
    return dagserve.Graph(out, name="overlapping")


def structured() -> dagserve.Graph:
    s = Scale(10)
    with dagserve.Input(schema=Req) as inp:
        x = pre(inp["x"])
        out = {"scaled": s(x), "offset": s.offset(x), "pair": (x, [inp["x"], 7])}
    return dagserve.Graph(out, name="structured")


def switched() -> dagserve.Graph:
    with dagserve.Input(schema=Req) as inp:
        out = dagserve.switch(
            inp["route"],
            {"a": counted(inp["x"], "branch_a"), "b": counted(pre(inp["x"]), "branch_b")},
            default=counted(inp["x"], "branch_default"),
        )
    return dagserve.Graph(out, name="switched")


def shared_once() -> dagserve.Graph:
    with dagserve.Input() as inp:
        shared = counted(inp, "shared")
        out = [pre(shared), Scale(2)(shared), shared]
    return dagserve.Graph(out, name="shared")


# Two sleeping nodes, one feeding the other: each node's own time shows in timings (a -> b).
@dagserve.node
async def nap(x: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return x


@dagserve.node
async def doze(x: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return x


def split(key: bool = False, seed: int | None = None) -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = dagserve.split(
            {"stable": post(inp["x"]), "canary": post(pre(inp["x"]))},
            {"stable": 90, "canary": 10},
            key=inp["user"] if key else None,
            seed=seed,
        )
    return dagserve.Graph(out, name="split")


def failing() -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = post(fail(pre(inp)))
    return dagserve.Graph(out, name="failing")


def batched() -> dagserve.Graph:
    return dagserve.Graph(batch_size, name="batched")


def napped(first_s: float = 0.2, then_s: float = 0.05) -> dagserve.Graph:
    """nap (``first_s``) feeds doze (``then_s``); on Ray nap's result goes to doze un-awaited."""
    with dagserve.Input() as inp:
        out = doze(nap(inp, first_s), then_s)
    return dagserve.Graph(out, name="napped")
