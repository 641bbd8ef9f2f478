"""``asyncio.timeout(delay)`` for a delay fixed in advance, with one loop timer for all its scopes.

``asyncio.timeout`` arms and cancels a loop timer per scope: ~4.7 µs per scope on uvloop, paid by
every request for its body deadline and again for its request deadline, although nearly all of
them finish long before either. With one fixed delay, scopes entered later end later, so the
deadlines of the scopes open on a loop form a queue in time order: one timer, armed for the
oldest open scope, serves them all (entering appends to the queue, leaving marks the scope done).
When the timer fires it expires the scopes past their deadline, drops finished ones and re-arms
for the next open scope. A scope expires exactly as under ``asyncio.timeout``: its task is
cancelled and the scope turns that ``CancelledError`` into ``TimeoutError`` on the way out::

    body_deadline = FixedTimeout(30.0)      # once
    async with body_deadline():             # per request, like asyncio.timeout(30.0)
        ...

Standard library only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from types import TracebackType
from typing import Self

__all__ = ["FixedTimeout"]

# Scope states.
_OPEN, _EXPIRED, _DONE = 1, 2, 3
# A queue holding more finished scopes than this (and more than open ones) is compacted, so a
# scope open for the whole delay does not keep every later, finished one in memory behind it.
_COMPACT_AT = 256


class FixedTimeout:
    """A factory of timeout scopes of one ``delay`` (seconds), sharing one timer per event loop.

    ``delay=None`` makes scopes that never expire, as ``asyncio.timeout(None)``.
    """

    __slots__ = ("_queue", "delay")

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self._queue: _Queue | None = None

    def __call__(self) -> contextlib.AbstractAsyncContextManager[object]:
        """A new scope; enter it with ``async with`` inside a task."""
        return _Scope(self) if self.delay is not None else contextlib.nullcontext()

    def _queue_for(self, loop: asyncio.AbstractEventLoop) -> _Queue:
        queue = self._queue
        if queue is None or queue.loop is not loop:
            # Scopes on a previous loop keep their own queue (and its timer) until they finish.
            queue = self._queue = _Queue(loop)
        return queue


class _Scope:
    __slots__ = ("_cancelling", "_owner", "_queue", "_task", "state", "when")

    def __init__(self, owner: FixedTimeout) -> None:
        self._owner = owner

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("A timeout scope must be entered inside a task.")
        self._task = task
        self._cancelling = task.cancelling()
        self.when = loop.time() + self._owner.delay  # type: ignore[operator]  # None never gets here
        self.state = _OPEN
        self._queue = self._owner._queue_for(loop)
        self._queue.add(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.state == _OPEN:
            self._queue.finish(self)
        # As asyncio.timeout: the cancellation is ours unless someone else cancelled the task too.
        elif self.state == _EXPIRED and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def expired(self) -> bool:
        """Did the deadline pass while the scope was open?"""
        return self.state == _EXPIRED


class _Queue:
    """The open scopes of one FixedTimeout on one loop, oldest (earliest deadline) first."""

    __slots__ = ("done", "handle", "loop", "scopes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.scopes: collections.deque[_Scope] = collections.deque()
        self.done = 0  # finished scopes still in the deque
        self.handle: asyncio.TimerHandle | None = None  # armed at or before the oldest open deadline

    def add(self, scope: _Scope) -> None:
        self.scopes.append(scope)
        if self.handle is None:
            self.handle = self.loop.call_at(scope.when, self._fire)

    def finish(self, scope: _Scope) -> None:
        scope.state = _DONE
        scopes = self.scopes
        self.done += 1
        while scopes and scopes[0].state == _DONE:  # usually the scope that just finished
            scopes.popleft()
            self.done -= 1
        if self.done > _COMPACT_AT and self.done * 2 > len(scopes):
            self.scopes = collections.deque(s for s in scopes if s.state != _DONE)
            self.done = 0

    def _fire(self) -> None:
        self.handle = None
        now = self.loop.time()
        scopes = self.scopes
        while scopes:
            head = scopes[0]
            if head.state == _OPEN and head.when > now:
                self.handle = self.loop.call_at(head.when, self._fire)
                return
            scopes.popleft()
            if head.state == _DONE:
                self.done -= 1
            else:
                head.state = _EXPIRED
                head._task.cancel()
