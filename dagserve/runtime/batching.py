"""An asyncio batcher: concurrent single calls in, one list call out, adaptive so a lone call never waits.

Both backends use it (the local one in-process, the Ray one inside each Serve replica). One batch
runs at a time per replica, up to ``max_batch_size`` items; what queued while a batch ran forms the
next one (Serve's own ``serve.batch`` closes a batch every ``wait_s`` even while the model is busy,
which keeps batches small under load). The user function takes a list and returns a list of the
same length.

When a batch goes is decided by :class:`BatchWindow`, from the calls the batcher has seen: a batch
leaves as soon as it holds as many calls as are expected to come together (the most calls the node
held at once in its last busy spell, at least 1), or ``wait_s`` after its oldest call arrived or
the previous batch ended, whichever is later. A node called one request at a time therefore answers
at once (its expected crowd is 1), while a node kept busy by N concurrent callers waits for all N
of them, without a fixed window. After ``wait_s`` with nothing in it the crowd is forgotten, so the
first call after a quiet spell never waits. The anchor is BentoML's adaptive batching, which sizes
its wait from the arrivals it observes; counting the callers present rather than the arrival rate
keeps a closed loop of one client (arrivals as fast as answers) from looking like a crowd.

A multiplexed node's calls carry their model id (``submit(item, model_id)``): a batch holds calls of
one id only (that of the oldest call waiting), and runs with that id current
(:func:`dagserve.model_id`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dagserve._errors import NodeError
from dagserve.runtime.multiplex import reset_model_id, set_model_id

__all__ = ["BatchWindow", "Batcher", "check_batch_result"]


def check_batch_result(node: str, result: Any, expected: int) -> list[Any]:
    """The batch's results as a list, or a :class:`NodeError` naming the node when the length is off."""
    if not isinstance(result, (list, tuple)):
        raise NodeError(
            f"Batched node {node!r} must return a list with one result per input, got "
            f"{type(result).__name__}.",
            node=node,
            error_type="BatchResultError",
        )
    if len(result) != expected:
        raise NodeError(
            f"Batched node {node!r} returned {len(result)} results for a batch of {expected} inputs; "
            "return exactly one result per input, in order.",
            node=node,
            error_type="BatchResultError",
        )
    return list(result)


class BatchWindow:
    """When the next batch should leave: the batcher's policy, apart from asyncio and the clock.

    Callers report every call that ``arrived`` and every call that ``left`` (answered, failed or
    dropped), with the time; ``delay`` then says how long a batch of ``queued`` calls should still
    wait. A *busy spell* lasts while the batcher holds any call; its peak (calls held at once,
    queued or running) is the crowd expected next time, unless the batcher then stays empty longer
    than ``wait_s``.
    """

    def __init__(self, max_batch_size: int, wait_s: float) -> None:
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.present = 0  # calls held now: queued or in the running batch
        self._peak = 0  # most calls held at once in this busy spell
        self._crowd = 1  # the peak of the last busy spell
        self._idle_since: float | None = None
        self._last_end = float("-inf")  # when the last batch finished

    def arrived(self, now: float) -> None:
        if self.present == 0 and self._idle_since is not None and now - self._idle_since > self.wait_s:
            self._crowd = 1  # quiet for a whole window: nobody is coming back soon
        self.present += 1
        self._peak = max(self._peak, self.present)

    def left(self, n: int, now: float) -> None:
        self.present -= n
        if self.present <= 0:
            self.present = 0
            self._crowd, self._peak = max(1, self._peak), 0
            self._idle_since = now

    def batch_ended(self, now: float) -> None:
        self._last_end = now

    def expected(self) -> int:
        """How many calls the next batch waits for: the crowd seen, within ``max_batch_size``."""
        return min(self.max_batch_size, max(self._crowd, self._peak))

    def delay(self, queued: int, oldest_arrival: float, now: float) -> float:
        """Seconds a batch of ``queued`` calls (the first arrived at ``oldest_arrival``) still waits; 0: go now."""
        if queued >= self.expected():
            return 0.0
        # Calls queued behind a running batch wait from its end: the callers it answers come back.
        return max(0.0, max(oldest_arrival, self._last_end) + self.wait_s - now)


class Batcher:
    """Groups ``submit(item)`` calls into ``run(list)`` calls (``clock``: seconds, for the window)."""

    def __init__(
        self,
        node: str,
        run: Callable[[list[Any]], Awaitable[Any]],
        max_batch_size: int,
        wait_s: float,
        on_batch: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.node = node
        self._run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self._on_batch = on_batch
        self._clock = clock
        self.window = BatchWindow(max_batch_size, wait_s)
        # (item, its future, when it arrived, its model id or None)
        self._queue: list[tuple[Any, asyncio.Future[Any], float, str | None]] = []
        self._timer: asyncio.Handle | None = None
        self._busy = False
        self.batch_sizes: list[int] = []  # recent sizes, for tests and metrics
        #: The size of the batch whose callers were answered last (what they read when they resume:
        #: the next batch may have started already, see :meth:`_execute`).
        self.answered = 0

    async def submit(self, item: Any, model_id: str | None = None) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        now = self._clock()
        self.window.arrived(now)
        self._queue.append((item, fut, now, model_id))
        if not self._busy:
            self._arm(loop, now)
        return await fut

    def _arm(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        """(Re)schedule the next batch's start from the window's advice."""
        if self._timer is not None:
            self._timer.cancel()
        delay = self.window.delay(len(self._queue), self._queue[0][2], now)
        # Even "now" is the next turn of the loop, so calls submitted in this one go together.
        self._timer = loop.call_soon(self._start, loop) if delay <= 0 else loop.call_later(delay, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._busy or not self._queue:
            return
        model_id = self._queue[0][3]
        if model_id is None and all(e[3] is None for e in self._queue[: self.max_batch_size]):
            taken = self._queue[: self.max_batch_size]
            del self._queue[: self.max_batch_size]
        else:  # one model id per batch: the oldest call's; the others keep their places
            taken, rest = [], []
            for entry in self._queue:
                (taken if entry[3] == model_id and len(taken) < self.max_batch_size else rest).append(entry)
            self._queue = rest
        batch = [(e[0], e[1]) for e in taken if not e[1].cancelled()]
        if len(batch) < len(taken):
            self.window.left(len(taken) - len(batch), self._clock())
        if not batch:
            if self._queue:
                self._arm(loop, self._clock())
            return
        self._busy = True
        loop.create_task(self._execute(batch, loop, model_id))

    async def _execute(
        self, batch: list[tuple[Any, asyncio.Future[Any]]], loop: asyncio.AbstractEventLoop, model_id: str | None = None
    ) -> None:
        token = set_model_id(model_id) if model_id is not None else None  # this task's own context
        ended = False
        try:
            size = len(batch)
            self.batch_sizes.append(size)
            if len(self.batch_sizes) > 1000:
                del self.batch_sizes[:500]
            if self._on_batch is not None:
                self._on_batch(size)
            try:
                results = check_batch_result(self.node, await self._run([i for i, _ in batch]), size)
            except BaseException as exc:  # every caller in the batch sees the failure
                if isinstance(exc, asyncio.CancelledError):
                    for _, f in batch:
                        f.cancel()
                    raise
                # SystemExit/KeyboardInterrupt from node code fail the batch's requests, not the loop.
                # Answered in turn after the next batch's start, as results are (see below).
                self._ended(loop, size)
                ended = True
                loop.call_soon(self._fail, batch, exc)
                return
            # The next batch is due before this one's callers are answered: its start goes first on
            # the loop, so the model does not sit idle while the callers' code (their answers, on
            # the local backend whole HTTP responses) runs.
            self._ended(loop, size)
            ended = True
            loop.call_soon(self._answer, batch, results)
        finally:
            if token is not None:
                reset_model_id(token)
            if not ended:
                self._ended(loop, len(batch))

    def _answer(self, batch: list[tuple[Any, asyncio.Future[Any]]], results: list[Any]) -> None:
        """Each caller of a finished batch gets its result (unless it gave up meanwhile). Their
        code runs next, before any other batch is answered: :attr:`answered` is their batch's size."""
        self.answered = len(batch)
        for (_, f), r in zip(batch, results, strict=True):
            if not f.done():
                f.set_result(r)

    def _fail(self, batch: list[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
        """Each caller of a failed batch gets its error (as :meth:`_answer`)."""
        self.answered = len(batch)
        for _, f in batch:
            if not f.done():
                f.set_exception(exc)

    def _ended(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        """A batch of ``size`` calls finished: the next one is armed (started at once when due)."""
        now = self._clock()
        self._busy = False
        self.window.batch_ended(now)
        self.window.left(size, now)
        if self._queue:
            self._arm(loop, now)
