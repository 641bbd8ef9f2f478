"""The work itself, written once and called by every server so all systems do the same thing."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from benchmarks.workloads import BATCH_COST_S, BRANCH_WAIT_S, BURN_S, MAX_BATCH


def pre(n: int) -> int:
    return n + 1


def model(n: int) -> int:
    return n * 2


def post(n: int) -> dict[str, Any]:
    return {"y": n}


def step(n: int) -> int:
    """One hop of the ``hop`` chains."""
    return n + 1


async def branch(n: int, i: int) -> int:
    """Fan-out branch ``i``: an I/O-like wait, then ``n + i``."""
    await asyncio.sleep(BRANCH_WAIT_S)
    return n + i


def branch_sync(n: int, i: int) -> int:
    """``branch`` as plain ``def`` code writes it: a blocking wait."""
    time.sleep(BRANCH_WAIT_S)
    return n + i


def combine(values: list[int]) -> dict[str, Any]:
    return {"y": sum(values)}


def burn(n: int) -> dict[str, Any]:
    """Spend BURN_S of this thread's CPU time (a busy loop), then answer.

    CPU time, not wall time: a replica running several calls in threads shares one GIL, so a
    wall-clock loop would let overlapping calls finish "10 ms" while each got a fraction of it.
    """
    deadline = time.thread_time() + BURN_S
    while time.thread_time() < deadline:
        pass
    return {"y": model(n)}


class Device:
    """A model that runs one call at a time, each costing BATCH_COST_S for up to MAX_BATCH inputs.

    The lock stands for an accelerator: without it, concurrent ``asyncio.sleep`` calls would
    overlap for free and batching would buy nothing, so the unbatched variant would be meaningless.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def run(self, xs: list[int]) -> list[dict[str, Any]]:
        if len(xs) > MAX_BATCH:
            raise ValueError(f"batch of {len(xs)} is larger than MAX_BATCH={MAX_BATCH}")
        async with self._lock:
            await asyncio.sleep(BATCH_COST_S)
        return [post(model(x)) for x in xs]


class SyncDevice:
    """``Device`` for plain ``def`` model code: a thread lock and a blocking wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def run(self, xs: list[int]) -> list[dict[str, Any]]:
        if len(xs) > MAX_BATCH:
            raise ValueError(f"batch of {len(xs)} is larger than MAX_BATCH={MAX_BATCH}")
        with self._lock:
            time.sleep(BATCH_COST_S)
        return [post(model(x)) for x in xs]

