"""Offline runs over any iterable: ``App.map`` / ``App.map_results``.

A lazy, bounded pipeline on top of ``App.acall``, so an offline run uses the very nodes, batching
and replicas the graph serves with. The caller's thread pulls payloads (a generator of millions
is never materialised and thread-bound sources keep working) and hands them to the App's event
loop; at most ``concurrency`` run at once, and at most ``concurrency`` more wait in the reorder
window when ``ordered``. Files and the ``dagserve batch`` command are in :mod:`dagserve.offline.files`.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from dagserve._errors import AppClosedError, DagserveError
from dagserve.runtime.executor import RequestContext

__all__ = ["App", "MapResult", "map_app", "map_results"]


class App(Protocol):
    """What a map run needs of :class:`dagserve.App` (which lives a layer above this one)."""

    @property
    def name(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def acall(self, payload: Any, *, context: RequestContext | None = ...) -> Awaitable[Any]: ...

    def _check_open(self) -> None: ...

    def _home_loop(self, current: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop: ...

T = TypeVar("T")

#: How long the consumer waits for a result before checking that the App is still alive.
_POLL_S = 0.5


# --------------------------------------------------------------------------------------------
# App.map: a bounded, lazy pipeline over any iterable
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class MapResult(Generic[T]):
    """The outcome of one payload in :meth:`App.map_results <dagserve.App.map_results>`.

    ``index`` is the payload's position in the input (0-based), ``payload`` the payload itself
    (handy to retry failures), ``ok`` whether the graph succeeded, ``value`` its output (``None``
    on failure), ``error`` the exception (``None`` on success) and ``timings`` the seconds spent
    per node for this payload.
    """

    index: int
    payload: T
    ok: bool
    value: Any = None
    error: BaseException | None = None
    timings: dict[str, float] = field(default_factory=dict)


class _Fatal:
    """A BaseException (not an ordinary failure) raised on the loop; the consumer re-raises it."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Dispatcher(Generic[T]):
    """The loop side of a map: starts one task per payload and posts each outcome to a queue."""

    def __init__(
        self,
        app: App,
        call: Callable[[T, RequestContext], Awaitable[Any]],
        out: queue.SimpleQueue[MapResult[T] | _Fatal],
        protocol: str,
    ) -> None:
        self.app = app
        self.call = call
        self.out = out
        self.protocol = protocol
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopped = False

    def start(self, batch: list[tuple[int, T]]) -> None:
        if self.stopped:
            return
        loop = asyncio.get_running_loop()
        for index, item in batch:
            task = loop.create_task(self._one(index, item))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _one(self, index: int, item: T) -> None:
        ctx = RequestContext(protocol=self.protocol)
        try:
            value = await self.call(item, ctx)
        except asyncio.CancelledError:
            if not self.stopped:  # cancelled by someone else (e.g. shutdown): the consumer still waits
                err = (
                    AppClosedError(f"App {self.app.name!r} was shut down while payload {index} ran.")
                    if self.app.closed
                    else DagserveError(f"Payload {index} was cancelled before it finished.")
                )
                self.out.put(MapResult(index, item, False, None, err, ctx.timings))
            raise
        except Exception as exc:
            self.out.put(MapResult(index, item, False, None, exc, ctx.timings))
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: stop the whole map
            self.out.put(_Fatal(exc))
            raise
        else:
            self.out.put(MapResult(index, item, True, value, None, ctx.timings))

    def stop(self) -> None:
        self.stopped = True
        for task in list(self.tasks):
            task.cancel()


def _check_concurrency(concurrency: Any, where: str) -> int:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise DagserveError(f"{where}(concurrency={concurrency!r}): concurrency must be a positive integer.")
    return concurrency


def map_results(
    app: App,
    payloads: Iterable[T],
    *,
    concurrency: int = 64,
    ordered: bool = True,
    call: Callable[[T, RequestContext], Awaitable[Any]] | None = None,
    protocol: str = "map",
) -> Iterator[MapResult[T]]:
    """Run ``app`` over ``payloads`` and yield one :class:`MapResult` per payload.

    ``payloads`` is read lazily from the calling thread: at most ``concurrency`` payloads run at
    once, and with ``ordered`` at most ``concurrency`` more finished ones wait for an earlier, slower
    one. Results come in input order when ``ordered``, else as they complete. ``call`` replaces
    ``app.acall`` (the batch command uses it to turn unreadable input rows into error results);
    ``protocol`` names the door in each request's context (``"batch"`` for ``dagserve batch``).

    Must be iterated from a thread without a running event loop (like ``App.call``).
    """
    concurrency = _check_concurrency(concurrency, "App.map")
    app._check_open()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise DagserveError(
            "App.map blocks and cannot run inside an event loop; iterate it from a plain thread "
            "(e.g. `await asyncio.to_thread(list, app.map(payloads))`) or use `await app.acall(...)` per payload."
        )
    if call is None:

        def call(payload: T, ctx: RequestContext) -> Awaitable[Any]:
            return app.acall(payload, context=ctx)

    return _iterate(app, payloads, call, concurrency, ordered, protocol)


def _iterate(
    app: App,
    payloads: Iterable[T],
    call: Callable[[T, RequestContext], Awaitable[Any]],
    concurrency: int,
    ordered: bool,
    protocol: str,
) -> Iterator[MapResult[T]]:
    loop = app._home_loop(None)
    out: queue.SimpleQueue[MapResult[T] | _Fatal] = queue.SimpleQueue()
    dispatcher = _Dispatcher(app, call, out, protocol)
    source = iter(payloads)
    # Pulled but not yet yielded: bounded so memory stays flat however long the input is.
    limit = concurrency * 2 if ordered else concurrency
    submitted = in_flight = pending = next_out = 0
    waiting: dict[int, MapResult[T]] = {}
    exhausted = False
    source_error: BaseException | None = None
    try:
        while True:
            batch: list[tuple[int, T]] = []
            while not exhausted and in_flight + len(batch) < concurrency and pending + len(batch) < limit:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                except Exception as exc:  # the source itself failed: finish what runs, then raise
                    source_error = exc
                    exhausted = True
                    break
                batch.append((submitted + len(batch), item))
            if batch:
                submitted += len(batch)
                in_flight += len(batch)
                pending += len(batch)
                loop.call_soon_threadsafe(dispatcher.start, batch)
            if in_flight == 0:
                break
            received = [_receive(app, loop, out)]
            # Take everything already there, so refills go to the loop in batches, not one by one.
            while True:
                try:
                    received.append(out.get_nowait())
                except queue.Empty:
                    break
            for r in received:
                if isinstance(r, _Fatal):
                    raise r.exc
                in_flight -= 1
                if not ordered:
                    pending -= 1
                    yield r
                    continue
                waiting[r.index] = r
                while next_out in waiting:
                    ready = waiting.pop(next_out)
                    next_out += 1
                    pending -= 1
                    yield ready
        if source_error is not None:
            raise source_error
    finally:
        if in_flight:
            try:
                loop.call_soon_threadsafe(dispatcher.stop)
            except RuntimeError:  # the loop is already closed: nothing left to cancel
                pass


def _receive(app: App, loop: asyncio.AbstractEventLoop, out: queue.SimpleQueue[Any]) -> Any:
    while True:
        try:
            return out.get(timeout=_POLL_S)
        except queue.Empty:
            if app.closed or not loop.is_running():
                raise AppClosedError(
                    f"App {app.name!r} was shut down while App.map was running; deploy the graph again."
                ) from None


def map_app(
    app: App,
    payloads: Iterable[Any],
    *,
    concurrency: int = 64,
    ordered: bool = True,
    return_exceptions: bool = True,
) -> Iterator[Any]:
    """``App.map``: the outputs of :func:`map_results`; a failure is yielded as its exception
    object with ``return_exceptions``, else raised (and the remaining payloads are cancelled)."""
    results = map_results(app, payloads, concurrency=concurrency, ordered=ordered)
    return _values(results, return_exceptions)


def _values(results: Iterator[MapResult[Any]], return_exceptions: bool) -> Iterator[Any]:
    try:
        for r in results:
            if r.ok:
                yield r.value
            elif return_exceptions:
                yield r.error
            else:
                assert r.error is not None  # set on every failed result by _Dispatcher
                raise r.error
    finally:
        results.close()  # type: ignore[attr-defined]
