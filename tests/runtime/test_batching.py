"""The asyncio Batcher both backends use, and its adaptive window (BatchWindow, driven by a given clock)."""

from __future__ import annotations

import asyncio

import pytest

from dagserve import NodeError
from dagserve.runtime.batching import Batcher, BatchWindow, check_batch_result

#: Long enough that a batch waiting for its window would show as a timeout, not a slow pass.
LONG_WAIT_S = 30.0
#: A safety net so a batch that wrongly waits LONG_WAIT_S fails the test instead of hanging it.
NET_S = 20.0


async def test_groups_concurrent_calls_up_to_the_size() -> None:
    sizes: list[int] = []

    async def run(items: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    b = Batcher("n", run, max_batch_size=4, wait_s=0.05, on_batch=sizes.append)
    results = await asyncio.gather(*(b.submit(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    assert sizes == [4, 4, 2]


async def test_a_lone_call_goes_at_once_whatever_the_window() -> None:
    async def run(items: list[int]) -> list[int]:
        return items

    b = Batcher("n", run, max_batch_size=32, wait_s=LONG_WAIT_S)
    assert await asyncio.wait_for(b.submit(7), NET_S) == 7
    assert b.batch_sizes == [1]


async def test_one_client_in_a_closed_loop_never_waits() -> None:
    """Arrivals as fast as the answers, but never two at once: every batch of one leaves at once."""

    async def run(items: list[int]) -> list[int]:
        return items

    b = Batcher("n", run, max_batch_size=32, wait_s=LONG_WAIT_S)

    async def loop() -> list[int]:
        return [await b.submit(i) for i in range(20)]

    assert await asyncio.wait_for(loop(), NET_S) == list(range(20))
    assert b.batch_sizes == [1] * 20


async def test_calls_submitted_in_one_turn_of_the_loop_go_together() -> None:
    async def run(items: list[int]) -> list[int]:
        return items

    b = Batcher("n", run, max_batch_size=32, wait_s=LONG_WAIT_S)
    assert await asyncio.wait_for(asyncio.gather(*(b.submit(i) for i in range(5))), NET_S) == list(range(5))
    assert b.batch_sizes == [5]


async def test_a_crowd_of_callers_is_waited_for_so_batches_stay_full() -> None:
    """Eight clients in a closed loop, the first one a turn ahead: it runs alone once, then every
    batch waits for all eight (a fixed window would split them into batches of 1 and 7 forever)."""
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        await release.wait()  # hold the first batch until the other seven have queued
        return items

    b = Batcher("n", run, max_batch_size=32, wait_s=LONG_WAIT_S)

    async def client(k: int, calls: int) -> None:
        if k:
            await asyncio.sleep(0)  # after the first client's batch has started
        for i in range(calls):
            await b.submit(i)

    async def crowd() -> None:
        clients = [asyncio.ensure_future(client(k, 5 if k == 0 else 4)) for k in range(8)]
        while b.window.present < 8:
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*clients)

    await asyncio.wait_for(crowd(), NET_S)
    assert b.batch_sizes == [1, 8, 8, 8, 8]


async def test_after_a_quiet_window_the_crowd_is_forgotten() -> None:
    now = [0.0]
    b = Batcher("n", _echo, max_batch_size=32, wait_s=LONG_WAIT_S, clock=lambda: now[0])
    assert await asyncio.wait_for(asyncio.gather(*(b.submit(i) for i in range(4))), NET_S) == [0, 1, 2, 3]
    now[0] += LONG_WAIT_S + 1  # the four went away a whole window ago
    assert await asyncio.wait_for(b.submit(9), NET_S) == 9
    assert b.batch_sizes == [4, 1]


async def _echo(items: list[int]) -> list[int]:
    return items


# -- the window, driven by its own clock ------------------------------------------------------------


def _after_a_crowd(n: int, ended: float, wait_s: float = 0.01) -> BatchWindow:
    """A window that saw ``n`` calls arrive at 0 and leave together at ``ended``, as one batch."""
    w = BatchWindow(max_batch_size=32, wait_s=wait_s)
    for _ in range(n):
        w.arrived(0.0)
    w.batch_ended(ended)
    w.left(n, ended)
    return w


def test_window_sends_a_lone_call_at_once_even_when_calls_follow_each_other_fast() -> None:
    w = BatchWindow(max_batch_size=32, wait_s=0.01)
    for k in range(5):
        t = k * 0.001
        w.arrived(t)
        assert w.delay(queued=1, oldest_arrival=t, now=t) == 0.0
        w.batch_ended(t + 0.0005)
        w.left(1, t + 0.0005)


def test_window_waits_for_the_crowd_of_the_last_busy_spell_then_sends_it_full() -> None:
    w = _after_a_crowd(8, ended=0.02)
    w.arrived(0.021)  # the first caller is back
    assert w.expected() == 8
    assert w.delay(queued=1, oldest_arrival=0.021, now=0.021) == pytest.approx(0.01)
    for _ in range(7):
        w.arrived(0.022)
    assert w.delay(queued=8, oldest_arrival=0.021, now=0.022) == 0.0


def test_window_never_waits_past_its_timeout() -> None:
    w = _after_a_crowd(8, ended=0.02)
    w.arrived(0.021)
    assert w.delay(queued=1, oldest_arrival=0.021, now=0.025) == pytest.approx(0.006)
    assert w.delay(queued=1, oldest_arrival=0.021, now=0.5) == 0.0


def test_window_forgets_the_crowd_after_a_quiet_window_and_when_it_shrinks() -> None:
    w = _after_a_crowd(8, ended=0.02)
    w.arrived(0.02 + 0.011)  # quiet for longer than the window
    assert w.expected() == 1 and w.delay(queued=1, oldest_arrival=0.031, now=0.031) == 0.0
    w.left(1, 0.032)
    w.arrived(0.033)  # a busy spell of one caller: one is all that is expected now
    assert w.expected() == 1


def test_window_calls_queued_behind_a_running_batch_wait_from_its_end() -> None:
    w = BatchWindow(max_batch_size=32, wait_s=0.01)
    for t in (0.0, 0.001, 0.002, 0.003):  # one runs, three queue behind it: a crowd of four
        w.arrived(t)
    w.batch_ended(0.05)
    w.left(1, 0.05)
    assert w.expected() == 4
    # Three queued since 1 ms, the batch ended at 50 ms: they wait for the fourth caller until 60 ms.
    assert w.delay(queued=3, oldest_arrival=0.001, now=0.05) == pytest.approx(0.01)


def test_window_expects_no_more_than_max_batch_size() -> None:
    w = BatchWindow(max_batch_size=32, wait_s=0.01)
    for _ in range(64):
        w.arrived(0.0)
    assert w.expected() == 32
    assert w.delay(queued=32, oldest_arrival=0.0, now=0.0) == 0.0


def test_window_of_zero_never_waits() -> None:
    w = _after_a_crowd(8, ended=0.0, wait_s=0.0)
    w.arrived(0.0)
    assert w.delay(queued=1, oldest_arrival=0.0, now=0.0) == 0.0


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


async def test_the_next_batch_starts_before_the_callers_of_the_last_one_resume() -> None:
    """A batch's callers run their own code (on the local backend, whole HTTP answers) after the
    next batch has started, so the model does not wait for them; each still reads its own batch's
    size in ``answered`` when it resumes."""
    events: list[str] = []

    async def run(items: list[str]) -> list[str]:
        events.append("start " + "".join(items))
        await asyncio.sleep(0.01)
        return items

    b = Batcher("n", run, max_batch_size=2, wait_s=0.05)  # the lone "e" waits that long for a partner

    async def caller(item: str) -> tuple[str, int]:
        out = await b.submit(item)
        events.append("resume " + out)
        return out, b.answered

    # Two callers, then three more queued while the first batch runs: batches ab, cd, e.
    first = [asyncio.ensure_future(caller(i)) for i in "ab"]
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(caller(i)) for i in "cde"]
    results = await asyncio.wait_for(asyncio.gather(*first, *later), NET_S)
    assert results == [("a", 2), ("b", 2), ("c", 2), ("d", 2), ("e", 1)]
    assert events.index("start cd") < events.index("resume a")
    assert b.batch_sizes == [2, 2, 1]
