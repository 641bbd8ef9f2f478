"""Streaming graphs the streaming tests share (local and Ray, Python and HTTP).

A payload says what the generator does: ``n`` items, ``first_delay`` seconds before the first,
``delay`` seconds after each, ``fail_at``
(raise before that item), ``pad`` (characters of padding per item, to fill buffers) and ``log``
(a file the generator appends one byte to per step: the tests count the steps taken, across
processes on Ray).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dagserve


def _step(req: dict[str, Any], i: int) -> Any:
    if req.get("fail_at") == i:
        raise ValueError(f"failed at item {i}")
    log = req.get("log")
    if log:
        with open(log, "a") as f:
            f.write("x")
    pad = req.get("pad", 0)
    return {"i": i, "pad": "x" * pad} if pad else i


@dagserve.node
def prepare(req: dict[str, Any]) -> dict[str, Any]:
    """An ordinary node upstream of the generator."""
    return dict(req)


@dagserve.node
async def produce(req: dict[str, Any]) -> AsyncIterator[Any]:
    await asyncio.sleep(req.get("first_delay", 0))
    for i in range(req.get("n", 5)):
        yield _step(req, i)
        if req.get("delay"):
            await asyncio.sleep(req["delay"])


@dagserve.node
def produce_sync(req: dict[str, Any]) -> Iterator[Any]:
    time.sleep(req.get("first_delay", 0))
    for i in range(req.get("n", 5)):
        yield _step(req, i)
        if req.get("delay"):
            time.sleep(req["delay"])


@dagserve.node
async def relay(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A node that consumes a stream and streams (a token filter that keeps everything)."""
    async for x in items:
        yield x


@dagserve.node
async def total(items: AsyncIterator[Any]) -> int:
    """A node that consumes a stream and returns one value."""
    return sum([x async for x in items])


class Words:
    """A model whose method streams."""

    def __init__(self) -> None:
        self.prefix = "w"

    def words(self, req: dict[str, Any]) -> Iterator[str]:
        for i in range(req.get("n", 3)):
            yield f"{self.prefix}{i}"


WordsNode = dagserve.node(Words)

with dagserve.Input() as inp:
    #: prepare -> produce -> relay: an ordinary node, a generator, a stream consumer that streams.
    chain = dagserve.Graph(relay(produce(prepare(inp))), name="chain")

with dagserve.Input() as inp:
    #: prepare -> produce_sync (a sync generator is the output).
    sync_chain = dagserve.Graph(produce_sync(prepare(inp)), name="sync_chain")

with dagserve.Input() as inp:
    #: prepare -> produce_sync -> relay: the Ray tests' graph (a sync generator read by an async one).
    mixed = dagserve.Graph(relay(produce_sync(prepare(inp))), name="mixed")

with dagserve.Input() as inp:
    #: produce -> total: a stream consumed into one value (the graph does not stream).
    summed = dagserve.Graph(total(produce(inp)), name="summed")

with dagserve.Input() as inp:
    #: a model method that streams.
    words = dagserve.Graph(WordsNode().words(inp), name="words")


def steps_taken(log: str) -> int:
    try:
        with open(log) as f:
            return len(f.read())
    except FileNotFoundError:
        return 0
