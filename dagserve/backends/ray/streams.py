"""Streaming on Ray: generator nodes through Serve's streaming handles.

A streaming step's call from the ingress goes over the direct transport when the node's pool is
usable (``STREAM`` frames: the replica sends at most ``STREAM_WINDOW`` items ahead of what the
ingress has read, so a slow reader slows the generator), else to its replica's
``dagserve_stream`` method (an async generator) through
``handle.options(method_name="dagserve_stream", stream=True)``; either way the caller reads the
items as they come (:class:`RayStream`). A stream read by another remote node does not come
through the ingress: the reading node gets a :class:`StreamSource` (where the stream comes from
and with which arguments) and its replica opens the stream itself (:func:`open_source`), so the
items go from replica to replica: over the direct transport too (the reading replica keeps
direct pools of its own, ``NodeReplica._peers``), through Serve's streaming handle until those
have connected or where the direct transport does not apply. Closing a stream cancels its call,
which cancels the generator in its replica (and the streams that generator reads).

Serve 2.60 has no flow control between a streaming replica and its caller: a generator read
through Serve (when the direct transport is off or does not apply, or before it has connected)
may run ahead of a slow reader, its items queued by Serve (docs/streaming.md says so).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagserve._errors import DagserveError, NodeError
from dagserve.runtime.failures import node_traceback
from dagserve.runtime.request_id import reset_request_id, set_request_id
from dagserve.runtime.streaming import Stream, close_streams, iterate

if TYPE_CHECKING:
    from dagserve.backends.ray.direct_routing import DirectRouting

__all__ = ["STREAM_METHOD", "RayStream", "StreamSource", "open_source", "read_streams", "replica_stream", "resolve_sources"]

#: The replica method streaming calls go to.
STREAM_METHOD = "dagserve_stream"


@dataclass(frozen=True)
class StreamSource:
    """A stream another replica opens: ``deployment``'s streaming call with these arguments."""

    deployment: str
    header: tuple[str, str, str]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: The source node's direct pool bounds ``(max_ongoing, max_queued)`` when its calls may go
    #: direct (the reading replica then opens it over the direct transport), else ``None``.
    limits: tuple[int, int | None] | None = None


class RayStream:
    """A streaming step's items, read from its replica through a Serve streaming handle.

    The call is sent on the first read; a stream handed to another remote node instead becomes a
    :class:`StreamSource` (:meth:`source`) and is never read here.
    """

    def __init__(
        self,
        handle: Any,
        deployment: str,
        header: tuple[str, str, str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        pool: Any = None,
        limits: tuple[int, int | None] | None = None,
    ) -> None:
        self._handle = handle
        self._pool = pool  # the node's direct pool (direct/pool.py), when its calls may take it
        self._limits = limits  # its bounds, for a replica that opens this stream (StreamSource)
        self.deployment = deployment
        self.header = header
        self.args = args
        self.kwargs = kwargs
        self._gen: Any = None
        self._closed = False

    def __aiter__(self) -> RayStream:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        if self._gen is None:
            args, kwargs = await _values(self.args, self.kwargs, self.header[1])
            if self._pool is not None and self._pool.usable:  # credit-bounded: DirectStream
                self._gen = self._pool.stream(self.header, args, kwargs)
            else:
                self._gen = self._handle().options(method_name=STREAM_METHOD, stream=True).remote(
                    self.header, *args, **kwargs
                )
        return await _next(self._gen, self.header[1])

    async def source(self) -> StreamSource:
        """This stream, for another replica to open (its arguments' values, resolved here)."""
        self._closed = True
        args, kwargs = await _values(self.args, self.kwargs, self.header[1])
        return StreamSource(self.deployment, self.header, args, kwargs, self._limits)

    async def aclose(self) -> None:
        self._closed = True
        gen, self._gen = self._gen, None
        if gen is not None:
            with contextlib.suppress(Exception):  # a finished or lost call needs no cancel
                gen.cancel()


async def _values(args: tuple[Any, ...], kwargs: dict[str, Any], step: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Arguments for a remote call of ``step``: upstream calls still in flight (the runner's pending
    calls) awaited, streams as :class:`StreamSource` (the replica opens them)."""
    args = tuple([await _sendable(a, step) for a in args])
    kwargs = {k: await _sendable(v, step) for k, v in kwargs.items()}
    return args, kwargs


async def _sendable(a: Any, step: str) -> Any:
    if isinstance(a, Stream):
        return await _as_source(a, step)
    if hasattr(a, "__await__"):
        return await a
    return a


async def _next(gen: Any, step: str) -> Any:
    """The next item of a Serve streaming call, Ray's errors turned into dagserve's."""
    from ray import exceptions as rex

    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        raise
    except rex.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, DagserveError):
            raise cause from exc
        raise _node_error(step, cause if isinstance(cause, BaseException) else exc) from exc
    except DagserveError:
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise _node_error(step, exc) from exc


def _node_error(step: str, exc: BaseException) -> NodeError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "(no message)"
    return NodeError(
        f"Node {step!r} raised {type(exc).__name__}: {text}",
        node=step,
        error_type=type(exc).__name__,
        traceback=node_traceback(exc),
    )


class _Opened:
    """A :class:`StreamSource` opened in a replica, read as it comes: over the direct transport
    when ``peers`` has a usable pool for its node (credit-bounded, as from the ingress), else
    through Serve's streaming handle."""

    def __init__(self, source: StreamSource, peers: DirectRouting | None) -> None:
        from ray import serve

        app = serve.get_replica_context().app_name
        self._step = source.header[1]
        pool = None
        if peers is not None and source.limits is not None:
            pool = peers.pool_for(source.deployment, app, source.limits)
        if pool is not None:
            self._gen: Any = pool.stream(source.header, source.args, source.kwargs)
            return
        handle = serve.get_deployment_handle(source.deployment, app)
        self._gen = handle.options(method_name=STREAM_METHOD, stream=True).remote(
            source.header, *source.args, **source.kwargs
        )

    def __aiter__(self) -> _Opened:
        return self

    async def __anext__(self) -> Any:
        return await _next(self._gen, self._step)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            self._gen.cancel()


def open_source(source: StreamSource, peers: DirectRouting | None = None) -> Stream:
    """The stream a :class:`StreamSource` names, opened from this replica (over ``peers``'s
    direct pools where they apply)."""
    return Stream(source.header[1], _Opened(source, peers))


def resolve_sources(
    args: tuple[Any, ...], kwargs: dict[str, Any], peers: DirectRouting | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A call's arguments with each :class:`StreamSource` opened (a stream to read)."""
    if not any(isinstance(a, StreamSource) for a in (*args, *kwargs.values())):
        return args, kwargs
    args = tuple(open_source(a, peers) if isinstance(a, StreamSource) else a for a in args)
    kwargs = {k: open_source(v, peers) if isinstance(v, StreamSource) else v for k, v in kwargs.items()}
    return args, kwargs


async def read_streams(
    step: Any, args: tuple[Any, ...], kwargs: dict[str, Any], send: Callable[[tuple[Any, ...], dict[str, Any]], Any]
) -> Any:
    """Call step ``step``, which reads streams: an inline node reads them here; a remote one gets
    each as a :class:`StreamSource` and its replica opens it (the items go replica to replica)."""
    sent = (args, kwargs)
    try:
        if not step.inline:
            sent = (tuple([await _as_source(a, step.name) for a in args]), {k: await _as_source(v, step.name) for k, v in kwargs.items()})
        return await send(*sent)
    finally:
        await close_streams(args, kwargs)


async def _as_source(a: Any, reader: str) -> Any:
    if not isinstance(a, Stream):
        return a
    if not isinstance(a.source, RayStream):
        raise NodeError(
            f"Node {reader!r} runs in its own replicas and cannot read the stream of inline node {a.name!r}; "
            "make both inline, or neither.",
            node=reader,
            error_type="CompileError",
        )
    return await a.source.source()


async def replica_stream(
    fn: Any,
    pool: ThreadPoolExecutor,
    header: tuple[str, str, str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    peers: DirectRouting | None = None,
) -> AsyncIterator[Any]:
    """Run generator node ``fn`` in a replica: its items, pulled one at a time; its failure as a
    :class:`~dagserve.NodeError` naming the step; the streams it read closed when it ends
    (``peers``: the replica's direct pools, for the streams it opens)."""
    _method, step, request_id = header[:3]
    args, kwargs = resolve_sources(args, kwargs, peers)
    token = set_request_id(request_id)
    source: Any = None
    try:
        try:
            source = iterate(fn(*args, **kwargs), pool)
        finally:
            reset_request_id(token)
        while True:
            try:
                item = await source.__anext__()
            except StopAsyncIteration:
                return
            except DagserveError:
                raise
            except (Exception, SystemExit, KeyboardInterrupt) as exc:
                raise _node_error(step, exc) from exc
            yield item
    finally:
        if source is not None and hasattr(source, "aclose"):
            with contextlib.suppress(Exception):
                await source.aclose()
        for a in (*args, *kwargs.values()):
            if isinstance(a, Stream):
                await a.aclose()
