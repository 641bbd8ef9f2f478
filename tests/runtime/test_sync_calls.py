"""The thread-or-inline policy for sync node code (runtime/sync_calls.py), on a fake clock.

The node functions advance a fake clock (and a fake thread usage: CPU time, voluntary context
switches) by what they "take", so every decision here is made on programmed figures, never on
how fast this machine is.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from dagserve.runtime.sync_calls import FAST_CALL_S, PROMOTE_AFTER, SyncCalls

FAST = FAST_CALL_S / 2
SLOW = FAST_CALL_S * 10

_var: contextvars.ContextVar[str] = contextvars.ContextVar("_var", default="unset")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0
        self.voluntary = 0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def usage(self) -> tuple[float, int]:
        return self.cpu, self.voluntary


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="sync-test") as p:
        yield p


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_node(clock: FakeClock):  # type: ignore[no-untyped-def]
    """A node that takes ``took`` seconds of fake wall time and says which thread ran it: on
    the CPU (``how="cpu"``), blocked (``"blocked"``) or preempted by the OS (``"preempted"``)."""

    def node(took: float, fail: bool = False, how: str = "cpu") -> str:
        clock.now += took
        if how == "cpu":
            clock.cpu += took
        elif how == "blocked":
            clock.voluntary += 1
        if fail:
            raise ValueError("boom")
        return threading.current_thread().name

    return node


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_fast_callable_runs_on_threads_until_proven_fast_then_inline(pool: ThreadPoolExecutor, clock: FakeClock) -> None:
    sync = SyncCalls("n", pool, clock=clock, usage=clock.usage)
    node = make_node(clock)

    async def main() -> list[str]:
        return [await sync.call("m", node, FAST) for _ in range(PROMOTE_AFTER + 2)]

    assert sync.mode("m") == "probing"
    names = run(main())
    assert all(n.startswith("sync-test") for n in names[:PROMOTE_AFTER])
    assert names[PROMOTE_AFTER:] == [threading.current_thread().name] * 2  # asyncio.run's loop: this thread
    assert sync.modes() == {"m": "inline"}


def test_a_slow_call_while_probing_restarts_the_count(pool: ThreadPoolExecutor, clock: FakeClock) -> None:
    sync = SyncCalls("n", pool, clock=clock, usage=clock.usage)
    node = make_node(clock)

    async def main() -> None:
        for _ in range(PROMOTE_AFTER - 1):
            await sync.call("m", node, FAST)
        await sync.call("m", node, SLOW)  # a blocking call (a sleep's wall time) counts as slow
        for _ in range(PROMOTE_AFTER - 1):
            await sync.call("m", node, FAST)
        assert sync.mode("m") == "probing"
        await sync.call("m", node, FAST)

    run(main())
    assert sync.mode("m") == "inline"


def test_an_always_slow_callable_never_goes_inline(pool: ThreadPoolExecutor, clock: FakeClock) -> None:
    sync = SyncCalls("n", pool, clock=clock, usage=clock.usage)
    node = make_node(clock)

    async def main() -> list[str]:
        return [await sync.call("m", node, SLOW) for _ in range(5 * PROMOTE_AFTER)]

    assert all(n.startswith("sync-test") for n in run(main()))
    assert sync.mode("m") == "probing"


def test_each_slow_inline_call_sends_it_back_to_threads_for_ten_times_longer_up_to_a_cap(
    pool: ThreadPoolExecutor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    sync = SyncCalls("n", pool, clock=clock, usage=clock.usage, promote_after=2, max_promote_after=200)
    node = make_node(clock)

    async def main() -> list[int]:
        needed, asked = 2, []
        for _ in range(4):
            for _ in range(needed - 1):
                await sync.call("m", node, FAST)
            assert sync.mode("m") == "probing"
            await sync.call("m", node, FAST)
            assert sync.mode("m") == "inline"
            assert await sync.call("m", node, SLOW) == threading.current_thread().name  # ran inline
            assert sync.mode("m") == "probing"  # back on threads at once
            asked.append(needed)
            needed = min(needed * 10, 200)
        assert (await sync.call("m", node, FAST)).startswith("sync-test")
        return asked

    with caplog.at_level(logging.DEBUG, logger="dagserve.sync"):
        assert run(main()) == [2, 20, 200, 200]
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 4 and "Node 'n': m took" in notes[0] and "until 200 fast calls in a row (sent back 4 times)" in notes[-1]


def test_callables_are_judged_apart(pool: ThreadPoolExecutor, clock: FakeClock) -> None:
    sync = SyncCalls("n", pool, clock=clock, usage=clock.usage, promote_after=3)
    node = make_node(clock)

    async def main() -> None:
        for _ in range(3):
            await sync.call("fast", node, FAST)
            await sync.call("slow", node, SLOW)

    run(main())
    assert sync.modes() == {"fast": "inline", "slow": "probing"}


def test_inline_sync_option_forces_either_way_without_timing(pool: ThreadPoolExecutor, clock: FakeClock) -> None:
    inline = SyncCalls("n", pool, clock=clock, usage=clock.usage, force=True)
    threads = SyncCalls("n", pool, clock=clock, usage=clock.usage, force=False)
    node = make_node(clock)

    async def main() -> tuple[list[str], list[str]]:
        return (
            [await inline.call("m", node, SLOW) for _ in range(3)],
            [await threads.call("m", node, FAST) for _ in range(3 * PROMOTE_AFTER)],
        )

    on_loop, on_threads = run(main())
    assert on_loop == [threading.current_thread().name] * 3
    assert all(n.startswith("sync-test") for n in on_threads)
    assert (inline.mode("m"), threads.mode("m")) == ("inline", "threads")
    assert clock.reads == 0


def test_errors_propagate_and_still_count(pool: ThreadPoolExecutor, clock: FakeClock) -> None:
    sync = SyncCalls("n", pool, clock=clock, usage=clock.usage, promote_after=2)
    node = make_node(clock)

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(ValueError, match="boom"):
                await sync.call("m", node, FAST, fail=True)  # keywords reach the callable
        assert sync.mode("m") == "inline"
        with pytest.raises(ValueError, match="boom"):
            await sync.call("m", node, SLOW, fail=True)

    run(main())
    assert sync.mode("m") == "probing"


def test_the_call_sees_the_callers_context_and_cannot_change_it(pool: ThreadPoolExecutor, clock: FakeClock) -> None:
    sync = SyncCalls("n", pool, clock=clock, usage=clock.usage, promote_after=1)

    def node() -> str:
        seen = _var.get()
        _var.set("changed by the node")
        return seen

    async def main() -> list[str]:
        _var.set("request-1")
        seen = [await sync.call("m", node) for _ in range(3)]  # on a thread, then inline
        return [*seen, _var.get()]

    assert run(main()) == ["request-1"] * 4
    assert sync.mode("m") == "inline"


def test_a_call_given_up_by_its_caller_is_not_counted(pool: ThreadPoolExecutor, clock: FakeClock) -> None:
    sync = SyncCalls("n", pool, clock=clock, usage=clock.usage, promote_after=1)
    release = threading.Event()

    def node() -> None:
        release.wait(10)  # ends after its caller gave up

    async def main() -> None:
        task = asyncio.create_task(sync.call("m", node))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()

    run(main())
    assert sync.mode("m") == "probing"


def test_a_call_preempted_by_the_os_is_not_slow_but_one_that_blocks_is(pool: ThreadPoolExecutor, clock: FakeClock) -> None:
    sync = SyncCalls("n", pool, clock=clock, usage=clock.usage, promote_after=2)
    node = make_node(clock)

    async def main() -> None:
        await sync.call("m", node, FAST)
        await sync.call("m", node, SLOW, how="preempted")  # on a thread: counts as fast
        assert sync.mode("m") == "inline"
        await sync.call("m", node, SLOW, how="preempted")  # inline: stays inline
        assert sync.mode("m") == "inline"
        await sync.call("m", node, SLOW, how="blocked")  # a sleep, I/O, a lock: slow
        assert sync.mode("m") == "probing"
        await sync.call("m", node, FAST, how="blocked")  # blocked but short: still fast
        assert sync.mode("m") == "probing"

    run(main())


def test_without_thread_usage_wall_time_alone_decides(pool: ThreadPoolExecutor, clock: FakeClock) -> None:
    sync = SyncCalls("n", pool, clock=clock, usage=None, promote_after=1)
    node = make_node(clock)

    async def main() -> None:
        await sync.call("m", node, SLOW, how="preempted")
        assert sync.mode("m") == "probing"
        await sync.call("m", node, FAST)
        await sync.call("m", node, SLOW, how="preempted")

    run(main())
    assert sync.mode("m") == "probing"


def test_the_thread_usage_reader_reads_this_threads_cpu_and_switches() -> None:
    from dagserve.runtime.sync_calls import THREAD_USAGE

    assert THREAD_USAGE is not None  # Linux: the policy tells preemption from blocking
    cpu, voluntary = THREAD_USAGE()
    threading.Event().wait(0.01)  # blocks: a voluntary switch
    assert THREAD_USAGE()[1] > voluntary and THREAD_USAGE()[0] >= cpu
