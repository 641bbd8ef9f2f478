"""Streams: what a generator node's step gives, for every backend.

A generator node (``def f(...): yield ...`` or ``async def``; a function or a model method) does
not return one value: its step's value is a :class:`Stream`, an async iterator of the items it
yields, read once by the graph's output or by the one node that consumes it (a parameter the node
iterates with ``async for``). Items are *pulled*: the generator takes its next step only when its
reader asks for the next item, so a slow reader slows it and nothing piles up in between (the
one item in hand at each hop is all the memory a stream holds, whatever its length). Closing a
stream (the reader stopped, the client disconnected, a deadline passed) stops the generator at
its next step and closes the streams it was reading.

:func:`open_stream` is what the executor calls for a streaming step; :class:`StreamRun` is what
``App.astream`` runs: the request deadline bounds the time to the first item, ``stream_timeout_s``
the whole stream.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor as ThreadPool
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from dagserve._errors import DagserveError, NodeError, RequestTimeoutError
from dagserve.runtime.failures import node_traceback

if TYPE_CHECKING:
    from dagserve.compiler.plan import Step
    from dagserve.runtime.tracing import CallSpan

# The executor's RequestContext and Runner, and runtime/scope.py's RequestScope (both modules
# import this one, directly or through the executor): what is used of them.
RequestContext = Any
Runner = Any
RequestScope = Any

__all__ = [
    "DEFAULT_STREAM_TIMEOUT_S",
    "Stream",
    "StreamRun",
    "close_streams",
    "consume",
    "ahop",
    "hop",
    "iterate",
    "open_stream",
    "stream_readers",
]

#: Seconds a whole stream may last, from the request's start, by default (``stream_timeout_s``).
DEFAULT_STREAM_TIMEOUT_S = 600.0

#: Called per item with (node, "first" | "gap", seconds): time to the first item, time between items.
ItemObserver = Callable[[str, str, float], None]

_DONE: Any = object()


class Stream:
    """A streaming step's items, as an async iterator read once.

    ``source`` is what the backend gives (an async iterator, started on the first read). Errors
    raised while reading it become :class:`~dagserve.NodeError` naming the node (dagserve's own
    errors pass as they are). ``aclose()`` stops the source.
    """

    __slots__ = ("_closed", "_last", "_source", "_span", "_start", "_timings", "items", "name", "observer")

    def __init__(
        self,
        name: str,
        source: AsyncIterator[Any],
        observer: ItemObserver | None = None,
        *,
        span: CallSpan | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        self.name = name
        self._source = source
        self._closed = False
        self._start = time.perf_counter()
        self._last: float | None = None
        self.observer = observer
        # The node call's span (traces exported) and the request's timings: both get the whole
        # stream's outcome and time when it ends, fails or is closed.
        self._span = span
        self._timings = timings
        #: Items read so far.
        self.items = 0

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        try:
            item = await self._source.__anext__()
        except StopAsyncIteration:
            self._closed = True
            self._ended(None)
            raise
        except DagserveError as exc:
            self._ended(exc)
            await self.aclose()
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else "(no message)"
            error = NodeError(
                f"Node {self.name!r} raised {type(exc).__name__} while streaming (after {self.items} "
                f"item(s)): {text}",
                node=self.name,
                error_type=type(exc).__name__,
                traceback=node_traceback(exc),
            )
            self._ended(error)
            await self.aclose()
            raise error from exc
        now = time.perf_counter()
        if self.observer is not None:
            if self._last is None:
                self.observer(self.name, "first", now - self._start)
            else:
                self.observer(self.name, "gap", now - self._last)
        self._last = now
        self.items += 1
        return item

    def _ended(self, error: BaseException | None) -> None:
        """The stream's whole time and outcome, once: into the request's timings and its span."""
        if self._timings is not None and self.name not in self._timings:
            self._timings[self.name] = time.perf_counter() - self._start
        span, self._span = self._span, None
        if span is not None:
            span.set("dagserve.items", self.items)
            span.end(error)

    async def aclose(self) -> None:
        """Stop the source (idempotent); its generator stops at its next step."""
        if self._closed:
            return
        self._closed = True
        self._ended(asyncio.CancelledError())  # closed before its end: cut short
        close = getattr(self._source, "aclose", None)
        if close is not None:
            try:
                await close()
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - closing what failed is not an error
                pass

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def source(self) -> AsyncIterator[Any]:
        """What the backend gave (a backend hands a stream it has not read on to another process)."""
        return self._source


def open_stream(runner: Runner, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: RequestContext) -> Stream:
    """The :class:`Stream` of streaming step ``step`` (the executor's call for such a step)."""
    span = ctx.span.call(step) if ctx.span is not None else None  # the runner reads it for the traceparent
    source = runner.stream(step, args, kwargs, ctx)  # type: ignore[attr-defined]
    return Stream(step.name, source, ctx.item_observer, span=span, timings=ctx.timings)


def iterate(produced: Any, pool: ThreadPool) -> AsyncIterator[Any]:
    """What a generator function returned, as an async iterator: an async generator as it is, a
    sync one stepped on ``pool`` (one ``next`` per item asked for, in the caller's context)."""
    if hasattr(produced, "__anext__"):
        return produced  # type: ignore[no-any-return]
    if hasattr(produced, "__next__"):
        return _Threaded(produced, pool)
    raise TypeError(f"a streaming node must return a generator, got {type(produced).__name__}")


class _Threaded:
    """A sync generator read from async code: each ``__anext__`` runs one ``next`` on a thread."""

    __slots__ = ("_context", "_gen", "_pending", "_pool")

    def __init__(self, gen: Iterator[Any], pool: ThreadPool) -> None:
        self._gen = gen
        self._pool = pool
        self._context = contextvars.copy_context()  # the request id for logs, as for sync calls
        # The step running on a thread (a concurrent future: it stays pending while its thread
        # runs, even when the reader that asked for it was cancelled).
        self._pending: Future[Any] | None = None

    def __aiter__(self) -> _Threaded:
        return self

    def _step(self) -> Any:
        return self._context.run(next, self._gen, _DONE)

    async def __anext__(self) -> Any:
        if self._pending is not None and not self._pending.done():
            await asyncio.wrap_future(self._pending)  # a step a cancelled reader left running
        self._pending = self._pool.submit(self._step)
        item = await asyncio.wrap_future(self._pending)
        if item is _DONE:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        pending = self._pending
        if pending is not None and not pending.done():
            # The generator is mid-step on its thread: close it once that step ends.
            pending.add_done_callback(lambda _: self._gen.close())
            return
        await asyncio.wrap_future(self._pool.submit(self._gen.close))


async def close_streams(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Close the streams among a call's arguments (the call that read them has ended)."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, Stream):
            await a.aclose()


def stream_readers(plan: Any) -> frozenset[int]:
    """The call steps of ``plan`` that take a stream as an argument."""
    streams = {s.index for s in plan.steps if s.streams}
    return frozenset(s.index for s in plan.steps if s.kind == "call" and streams.intersection(s.inputs))


async def consume(call: Awaitable[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Await a call that reads streams, then close them (it may have stopped reading early)."""
    try:
        return await call
    finally:
        await close_streams(args, kwargs)


class StreamRun:
    """One streaming request, as ``App.astream`` runs it, in its :class:`RequestScope`.

    ``open`` runs the graph to its output stream (the executor); the request ``timeout_s`` bounds
    that and the first item, ``stream_timeout_s`` the whole stream from the request's start. The
    scope begins when the first item is asked for, is active around each step of the stream
    (node code and log records see the request's id and trace), and ends once, when the stream
    ends, fails or is closed.
    """

    def __init__(
        self,
        open: Callable[[], Awaitable[Stream]],  # noqa: A002 - the natural name
        *,
        scope: RequestScope,
        timeout_s: float | None,
        stream_timeout_s: float | None,
    ) -> None:
        self._open = open
        self._scope = scope
        self._ctx = scope.ctx
        self._timeout_s = timeout_s
        self._stream_timeout_s = stream_timeout_s

    async def items(self) -> AsyncIterator[Any]:
        """The items, in order; raises the stream's error (a timeout names the node)."""
        scope = self._scope
        start = asyncio.get_running_loop().time()  # asyncio's timeouts run on the loop's clock
        whole = None if self._stream_timeout_s is None else start + self._stream_timeout_s
        first = None if self._timeout_s is None else start + self._timeout_s
        if whole is not None and (first is None or whole < first):
            first = whole
        stream: Stream | None = None
        error: BaseException | None = None
        try:
            tokens = scope.activate()
            try:
                scope.begin()
                async with asyncio.timeout_at(first):
                    stream = await self._open()
            except TimeoutError as exc:
                raise self._timeout(exc, stream, first=True) from None
            finally:
                scope.deactivate(tokens)
            deadline, is_first = first, True
            while True:
                tokens = scope.activate()
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await stream.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise self._timeout(exc, stream, first=is_first) from None
                finally:
                    scope.deactivate(tokens)
                yield item
                deadline, is_first = whole, False
        except BaseException as exc:
            # The reader closing the stream early (GeneratorExit) is a cancellation for observers.
            error = asyncio.CancelledError() if isinstance(exc, GeneratorExit) else exc
            raise
        finally:
            if stream is not None:
                await stream.aclose()
            scope.end(error)

    def _timeout(self, exc: TimeoutError, stream: Stream | None, *, first: bool) -> BaseException:
        if isinstance(exc, RequestTimeoutError):
            return exc
        rid = self._ctx.request_id
        if first and (self._stream_timeout_s is None or (self._timeout_s or 0) <= self._stream_timeout_s):
            running = sorted(self._ctx.running) or ([stream.name] if stream is not None else [])
            where = f"; still running: {', '.join(running)}" if running else ""
            return RequestTimeoutError(
                f"Request {rid} gave no first item within {self._timeout_s:g} s{where}. Raise the request "
                "timeout, or make the slow node faster.",
                node=running[0] if running else None,
            )
        node = stream.name if stream is not None else None
        got = f" after {stream.items} item(s)" if stream is not None else ""
        return RequestTimeoutError(
            f"Request {rid}: the stream of {node!r} did not end within stream_timeout_s="
            f"{self._stream_timeout_s:g} s{got}. Raise stream_timeout_s, or stream less.",
            node=node,
        )


class _Cursor:
    """An async iterator read from another thread or loop, one step at a time on its own loop;
    closing it first stops a step a cancelled reader left running there."""

    __slots__ = ("items", "loop", "task")

    def __init__(self, items: AsyncIterator[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.items = items
        self.loop = loop
        self.task: asyncio.Task[Any] | None = None

    def step(self) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(self._next(), self.loop)

    async def _next(self) -> Any:
        self.task = asyncio.current_task()
        try:
            return await self.items.__anext__()
        finally:
            self.task = None

    def close(self) -> Future[Any] | None:
        return asyncio.run_coroutine_threadsafe(self._close(), self.loop) if self.loop.is_running() else None

    async def _close(self) -> None:
        task = self.task
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        close = getattr(self.items, "aclose", None)
        if close is not None:
            await close()


def hop(items: AsyncIterator[Any], loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """Read an async iterator living on ``loop`` (another thread's) from sync code; closing the
    returned iterator (or dropping it) closes ``items`` on its loop."""
    cursor = _Cursor(items, loop)
    try:
        while True:
            try:
                item = cursor.step().result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        closing = cursor.close()
        if closing is not None:
            closing.result(timeout=10)


async def ahop(items: AsyncIterator[Any], loop: asyncio.AbstractEventLoop) -> AsyncIterator[Any]:
    """Read an async iterator living on ``loop`` from another running loop."""
    cursor = _Cursor(items, loop)
    try:
        while True:
            try:
                item = await asyncio.wrap_future(cursor.step())
            except StopAsyncIteration:
                return
            yield item
    finally:
        closing = cursor.close()
        if closing is not None:
            await asyncio.wrap_future(closing)
