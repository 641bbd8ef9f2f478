"""The asyncio Batcher used by the local backend."""

from __future__ import annotations

import asyncio

import pytest

from dagserve import NodeError
from dagserve.runtime.batching import Batcher, check_batch_result


async def test_groups_concurrent_calls_up_to_the_size() -> None:
    sizes: list[int] = []

    async def run(items: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    b = Batcher("n", run, max_batch_size=4, wait_s=0.05, on_batch=sizes.append)
    results = await asyncio.gather(*(b.submit(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    assert sizes == [4, 4, 2]


async def test_a_lone_call_waits_at_most_the_timeout() -> None:
    async def run(items: list[int]) -> list[int]:
        return items

    b = Batcher("n", run, max_batch_size=32, wait_s=0.02)
    loop = asyncio.get_running_loop()
    t = loop.time()
    assert await b.submit(7) == 7
    assert loop.time() - t < 10  # ordering: answered by the 0.02 s timer, not by a batch that never fills
    assert b.batch_sizes == [1]


async def test_one_batch_at_a_time_and_the_queue_fills_meanwhile() -> None:
    running = 0
    peak = 0

    async def run(items: list[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return items

    b = Batcher("n", run, max_batch_size=8, wait_s=0.001)
    first = asyncio.ensure_future(b.submit(0))
    await asyncio.sleep(0.005)  # first batch of 1 is running
    rest = await asyncio.gather(*(b.submit(i) for i in range(1, 9)))
    assert await first == 0 and rest == list(range(1, 9))
    assert peak == 1
    assert b.batch_sizes == [1, 8]


async def test_failure_reaches_every_caller_in_the_batch() -> None:
    async def run(items: list[int]) -> list[int]:
        raise RuntimeError("boom")

    b = Batcher("n", run, max_batch_size=3, wait_s=0.01)
    results = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_wrong_length_is_a_node_error() -> None:
    async def run(items: list[int]) -> list[int]:
        return items[:1]

    b = Batcher("classifier", run, max_batch_size=2, wait_s=0.01)
    results = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
    assert all(isinstance(r, NodeError) for r in results)
    assert "Batched node 'classifier' returned 1 results for a batch of 2 inputs" in str(results[0])


def test_check_batch_result_messages() -> None:
    assert check_batch_result("n", (1, 2), 2) == [1, 2]
    with pytest.raises(NodeError, match=r"Batched node 'n' must return a list with one result per input, got dict"):
        check_batch_result("n", {"a": 1}, 1)
    with pytest.raises(NodeError, match=r"returned 3 results for a batch of 2 inputs; return exactly one result per input"):
        check_batch_result("n", [1, 2, 3], 2)
