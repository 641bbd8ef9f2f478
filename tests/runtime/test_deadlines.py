"""FixedTimeout: asyncio.timeout's behaviour, with one loop timer for every scope of one delay."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from dagserve.runtime.deadlines import FixedTimeout


async def test_a_scope_past_its_deadline_raises_timeout_error_on_time() -> None:
    deadline = FixedTimeout(0.05)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        async with deadline():
            await asyncio.sleep(10)
    assert 0.04 < time.monotonic() - start < 5.0  # not early, and long before the 10 s sleep ends


async def test_scopes_that_finish_in_time_never_expire_and_leave_the_queue_empty() -> None:
    deadline = FixedTimeout(0.05)
    for _ in range(100):
        async with deadline() as scope:
            await asyncio.sleep(0)
        assert not scope.expired()
    queue = deadline._queue
    assert queue is not None and not queue.scopes and queue.done == 0
    await asyncio.sleep(0.1)  # the timer fires on an empty queue and is not armed again
    assert queue.handle is None


async def test_concurrent_scopes_expire_each_at_its_own_deadline() -> None:
    deadline = FixedTimeout(0.1)
    ended: dict[int, float] = {}
    start = time.monotonic()

    async def one(i: int, work_s: float) -> str:
        await asyncio.sleep(i * 0.03)  # entered 30 ms apart: deadlines at 100, 130, 160 ... ms
        try:
            async with deadline():
                await asyncio.sleep(work_s)
            return "ok"
        except TimeoutError:
            return "timeout"
        finally:
            ended[i] = time.monotonic() - start

    outcomes = await asyncio.gather(*(one(i, 10 if i % 2 else 0.01) for i in range(6)))
    assert outcomes == ["ok", "timeout"] * 3
    for i in (1, 3, 5):
        assert i * 0.03 + 0.1 - 0.01 < ended[i] < i * 0.03 + 0.1 + 0.5


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    deadline = FixedTimeout(10)

    async def body() -> None:
        async with deadline():
            await asyncio.sleep(10)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadline._queue.scopes  # type: ignore[union-attr]


async def test_an_outer_asyncio_timeout_wins_over_a_later_fixed_one() -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05) as outer:
            async with FixedTimeout(10)():
                await asyncio.sleep(10)
    assert outer.expired()


async def test_a_long_scope_does_not_keep_finished_ones_in_memory() -> None:
    deadline = FixedTimeout(10)
    slow = asyncio.ensure_future(_hold(deadline, 0.2))
    await asyncio.sleep(0)
    for _ in range(2000):
        async with deadline():
            pass
    queue = deadline._queue
    assert queue is not None and len(queue.scopes) < 600
    await slow
    assert not queue.scopes and queue.done == 0


def test_none_never_expires_and_each_loop_gets_its_own_timer() -> None:
    async def run(delay: float | None) -> bool:
        async with FixedTimeout(delay)():
            await asyncio.sleep(0.01)
        return True

    assert asyncio.run(run(None))
    deadline = FixedTimeout(0.02)

    async def expires() -> None:
        async with deadline():
            await asyncio.sleep(10)

    for runner in (asyncio.run, uvloop.run, asyncio.run):  # a new loop each time
        with pytest.raises(TimeoutError):
            runner(expires())


async def _hold(deadline: FixedTimeout, seconds: float) -> None:
    async with deadline():
        await asyncio.sleep(seconds)
