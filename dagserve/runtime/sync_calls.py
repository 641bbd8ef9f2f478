"""Where a node's synchronous code runs: on a worker thread, or inline on the event loop.

A plain ``def`` node must never block the event loop that serves every other request, so sync
code runs on a worker thread. But the hand-off (a pool thread woken, the result sent back to the
loop through its self-pipe) costs tens of microseconds, more than most pre- and post-processing
steps themselves: the ``chain`` benchmark with ``def`` nodes ran at about half the speed of the
same chain with ``async def`` nodes. :class:`SyncCalls` decides per callable (a replica's method):

* **probing** (the start): the call runs on a worker thread and is measured there (not its
  queueing). After ``promote_after`` fast calls in a row the callable runs **inline**; a slow call
  restarts the count.
* **inline**: the call runs on the loop, still timed. A slow call sends the callable back to
  probing at once (so a node that was fast and turns slow blocks the loop for that one call),
  needing ten times more fast calls in a row than before to come back (160, 1,600, then 16,000
  at most: a node slow once in a while blocks the loop ever more rarely, a node slow more often
  than that never comes back). Each return is logged at debug.
* **threads**: forced by ``inline_sync=False``: no timing at all.

Not "threads for good" after a few slow calls: a call waiting for the GIL held by another thread
is counted as blocked (it cannot be told from waiting for a lock), so a long-running replica with
busy threads would in the end pin trivial nodes to threads for ever.

A call is *slow* when its wall time is over ``fast_s`` and it either used more than ``fast_s`` of
its thread's CPU or blocked (its thread made a voluntary context switch: ``time.sleep``, I/O, a
lock, waiting for the GIL). A call whose thread was only preempted by the OS (an involuntary
switch: another process took the core) is not slow, however long it took: on a loaded machine
that happens to trivial calls all the time. Where the thread's usage cannot be read (no
``RUSAGE_THREAD``: not Linux), wall time alone decides.

``inline_sync=True`` on a node forces inline without any timing. Both backends use this one
policy (the local backend's replicas and inline nodes, and each Ray replica), for plain calls and
batched calls alike (a batch call is timed as a whole).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, Literal

from dagserve.runtime.handles import holds_handles

log = logging.getLogger("dagserve.sync")

__all__ = ["FAST_CALL_S", "MAX_PROMOTE_AFTER", "PROMOTE_AFTER", "Mode", "SyncCalls", "sync_force"]

#: A call whose own wall time is at most this is fast; a longer one is slow if it used this much
#: CPU or blocked (see above).
FAST_CALL_S = 200e-6
#: Fast calls in a row, measured on a worker thread, before a callable runs inline.
PROMOTE_AFTER = 16
#: The most fast calls in a row asked of a callable that was sent back from inline (x10 each time).
MAX_PROMOTE_AFTER = 16_000

Mode = Literal["probing", "inline", "threads"]

#: The calling thread's (CPU seconds, voluntary context switches) so far.
Usage = Callable[[], tuple[float, int]]


def _thread_usage_reader() -> Usage | None:
    try:
        import resource

        who = resource.RUSAGE_THREAD  # Linux only
        resource.getrusage(who)
    except (ImportError, AttributeError, OSError, ValueError):
        return None
    getrusage, thread_time = resource.getrusage, time.thread_time

    def usage() -> tuple[float, int]:
        # CPU from the thread's clock, not ru_utime/ru_stime: those are brought up to date only
        # at scheduler events, so a preemption would charge a call for the loop's earlier work.
        return thread_time(), getrusage(who).ru_nvcsw

    return usage


THREAD_USAGE: Usage | None = _thread_usage_reader()


def sync_force(option: bool | None, spec: Any) -> bool | None:
    """The ``force`` of a deployment's :class:`SyncCalls`: its ``inline_sync`` option, except that
    a model holding handles (constructor arguments) always runs its sync code on threads, where
    ``handle.call()`` may wait for the event loop."""
    if spec.kind == "model" and holds_handles((spec.init_args, dict(spec.init_kwargs))):
        return False
    return option


class _State:
    """One callable's place in the policy (read and written on the loop only)."""

    __slots__ = ("demotions", "fast", "mode", "needed")

    def __init__(self, mode: Mode, needed: int) -> None:
        self.mode: Mode = mode
        self.fast = 0  # fast calls in a row while probing
        self.needed = needed  # fast calls in a row that promote it
        self.demotions = 0


class SyncCalls:
    """The adaptive thread-or-inline policy for the sync callables of one replica.

    ``owner`` names the node in log records; ``pool`` runs the calls that go to threads;
    ``force`` is the node's ``inline_sync`` option (``None``: adaptive). ``clock``, ``usage``,
    ``fast_s``, ``promote_after`` and ``max_promote_after`` are there for tests.
    """

    def __init__(
        self,
        owner: str,
        pool: Executor,
        *,
        force: bool | None = None,
        clock: Callable[[], float] = time.perf_counter,
        usage: Usage | None = THREAD_USAGE,
        fast_s: float = FAST_CALL_S,
        promote_after: int = PROMOTE_AFTER,
        max_promote_after: int = MAX_PROMOTE_AFTER,
    ) -> None:
        self.owner = owner
        self.pool = pool
        self.force = force
        self._clock = clock
        self._usage = usage
        self._fast_s = fast_s
        self._promote_after = promote_after
        self._max_promote_after = max_promote_after
        self._states: dict[str, _State] = {}

    def mode(self, key: str) -> Mode:
        """Where ``key``'s next call runs (for tests, diagnostics and status)."""
        return self._state(key).mode

    def modes(self) -> dict[str, Mode]:
        """Every callable called so far and where its next call runs."""
        return {key: s.mode for key, s in self._states.items()}

    def _state(self, key: str) -> _State:
        state = self._states.get(key)
        if state is None:
            mode: Mode = "probing" if self.force is None else ("inline" if self.force else "threads")
            state = self._states[key] = _State(mode, self._promote_after)
        return state

    def call(self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Run ``fn(*args, **kwargs)`` where the policy says; ``key`` names the callable (its method)."""
        state = self._states.get(key) or self._state(key)
        return self._call(state, state.mode, key, fn, args, kwargs)

    def call_with_handles(self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """:meth:`call` for a call whose arguments hold handles (the graph passes the step some):
        always on a thread, where ``handle.call()`` may wait for the event loop. The caller knows
        it from the step (compiled once), so plain calls never walk their arguments for handles."""
        state = self._states.get(key) or self._state(key)
        return self._call(state, "threads", key, fn, args, kwargs)

    def call_batch(self, key: str, fn: Callable[..., Any], items: list[Any]) -> Awaitable[Any]:
        """A batched call ``fn(items)``: on a thread when an item holds handles (one walk per batch:
        the batch's steps are not known where it runs), else where the policy says."""
        state = self._states.get(key) or self._state(key)
        return self._call(state, "threads" if holds_handles(items) else state.mode, key, fn, (items,), {})

    async def _call(
        self, state: _State, mode: Mode, key: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if mode == "inline":
            # The same context isolation as on a thread: what the node sets stays in its call.
            run = contextvars.copy_context().run
            if self.force:
                return run(fn, *args, **kwargs)
            verdict: list[float] = []
            try:
                return self._timed(verdict, run, fn, args, kwargs)
            finally:
                if verdict[0]:
                    self._demote(key, state, verdict[0])
        loop = asyncio.get_running_loop()
        # The thread sees this request's context (request id for logs) like async nodes do.
        run = contextvars.copy_context().run
        if mode == "threads":
            if kwargs:
                return await loop.run_in_executor(self.pool, run, functools.partial(fn, *args, **kwargs))
            return await loop.run_in_executor(self.pool, run, fn, *args)
        verdict: list[float] = []
        try:
            return await loop.run_in_executor(self.pool, self._timed, verdict, run, fn, args, kwargs)
        finally:
            if verdict:  # empty when the caller gave up (cancelled) before the thread finished
                self._observe(state, verdict[0] > 0)

    def _timed(
        self,
        verdict: list[float],
        run: Callable[..., Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """The call, measured on the thread that runs it (the loop's or a worker's): its wall time
        appended to ``verdict`` when it was slow, else 0."""
        clock, usage = self._clock, self._usage
        used = usage() if usage is not None else None
        started = clock()
        try:
            return run(fn, *args, **kwargs)
        finally:
            took = clock() - started
            verdict.append(took if took > self._fast_s and _slow(self._fast_s, used, usage) else 0.0)

    def _observe(self, state: _State, slow: bool) -> None:
        """A probing call ended, slow or not."""
        if slow:
            state.fast = 0
            return
        state.fast += 1
        if state.fast >= state.needed and state.mode == "probing":
            state.mode = "inline"

    def _demote(self, key: str, state: _State, took: float) -> None:
        state.demotions += 1
        state.fast = 0
        state.mode = "probing"
        state.needed = min(state.needed * 10, self._max_promote_after)
        log.debug(
            "Node %r: %s took %.3f ms on the event loop (over %.3f ms); it runs on threads until "
            "%d fast calls in a row (sent back %d times)",
            self.owner, key, took * 1e3, self._fast_s * 1e3, state.needed, state.demotions,
        )


def _slow(fast_s: float, used: tuple[float, int] | None, usage: Usage | None) -> bool:
    """Was a call over ``fast_s`` of wall time really slow, not just preempted by the OS?
    ``used`` is its thread's usage when it started (None: unknown, so yes)."""
    if used is None or usage is None:
        return True
    cpu, voluntary = usage()
    return cpu - used[0] > fast_s or voluntary > used[1]
