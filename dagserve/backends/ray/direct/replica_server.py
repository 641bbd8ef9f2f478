"""The replica side of the direct transport: :class:`ReplicaServer` serves one replica's calls.

It runs on the replica's event loop, listens on the replica's Unix socket (and, for callers on
other Ray nodes, on TCP on its node's Ray address, token handshake first: :mod:`.auth`), runs each call with the
replica's ``dispatch`` and answers it, holds the replica's ``max_ongoing_requests`` over every
caller (refusing a direct call past it with ``BUSY``, telling the caller ``ROOM`` later) and stops
in order (``DRAINING``, ``REJECTED``, then the held calls finish).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from dagserve.backends.ray.direct.auth import Handshake
from dagserve.backends.ray.direct.frames import (
    BUSY,
    CALL,
    CANCEL,
    CREDIT,
    DRAINING,
    MODELS,
    ERROR,
    ITEM,
    OK,
    REJECTED,
    ROOM,
    STATS,
    STREAM,
    STREAM_WINDOW,
    Framed,
    FrameLimits,
    dumps,
    read_call,
    step_of,
    too_large,
)

__all__ = ["DRAIN_CLOSE_S", "Dispatch", "ReplicaServer"]

#: How long a stopping replica waits for each ingress to hang up after its last answer.
DRAIN_CLOSE_S = 5.0

Dispatch = Callable[[Any, tuple[Any, ...], dict[str, Any]], Awaitable[Any]]


class ReplicaServer:
    """Serves one replica's calls on a Unix socket (runs on the replica's event loop).

    ``dispatch(header, args, kwargs)`` runs one call (the replica's node code); ``stats()``
    answers ``STATS`` frames (batch counts; :meth:`stats` adds the refusals and, given
    ``handle_calls``, the calls the node made through handles: runtime/call_stats.py). ``limit()`` is the replica's ``max_ongoing_requests``
    (read per call: Serve changes it in place), over the direct calls and the calls Serve routes
    here (which take their slot with :meth:`admit`); a direct call past it is refused (``BUSY``).
    """

    def __init__(
        self,
        path: str,
        dispatch: Dispatch,
        stats: Callable[[], Any],
        *,
        limit: Callable[[], int] | None = None,
        limits: FrameLimits | None = None,
        stream: Callable[[Any, tuple[Any, ...], dict[str, Any]], AsyncIterator[Any]] | None = None,
        tcp_host: str | None = None,
        auth_key: bytes | None = None,
        handle_calls: Callable[[], Any] | None = None,
    ) -> None:
        if tcp_host is not None and not auth_key:
            raise ValueError("the cross-node listener needs the cluster's token (no unauthenticated pickle on TCP)")
        if tcp_host in ("", "0.0.0.0", "::"):
            raise ValueError("the cross-node listener binds to the node's Ray address, never every interface")
        self.path = path
        self.tcp_host = tcp_host
        self._auth_key = auth_key
        #: ``(host, port)`` of the cross-node listener once it listens (``tcp_host`` given).
        self.tcp_address: tuple[str, int] | None = None
        self._tcp_server: asyncio.AbstractServer | None = None
        self._dispatch = dispatch
        #: ``stream(header, args, kwargs)``: a generator node's items (``STREAM`` frames).
        self._stream = stream
        self._stats = stats
        self._handle_calls = handle_calls
        self.limit: Callable[[], int] = limit or _unlimited
        self.limits = limits or FrameLimits()
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_ServerConn] = set()
        self.draining = False
        self.closed = False
        #: Calls running here now: direct ones and those Serve routed (through ``admit``).
        self.ongoing = 0
        #: Direct calls refused because the replica was full (each was sent elsewhere or queued).
        self.refusals = 0
        #: Peers and connections refused, by reason (protocol.REFUSAL_REASONS), sent with STATS.
        self.transport_refusals: collections.Counter[str] = collections.Counter()
        # Who waits for a free slot (a refused connection, a call Serve routed), told when one frees.
        self._want_room: dict[Any, Callable[[], None]] = {}
        self._changed = asyncio.Event()  # a call finished or a caller hung up (for drain)
        #: A multiplexed node's notice of the model ids it holds (sent to each new caller too).
        self._models_frame: bytes | None = None

    def stats(self) -> dict[str, Any]:
        """What a ``STATS`` frame answers: ``batches`` (the replica's batch counts), ``refusals``,
        ``handle_calls`` (``CallStats.snapshot``; empty without ``handle_calls``) and ``replica``
        (its id: the socket's name)."""
        calls = self._handle_calls() if self._handle_calls is not None else []
        replica = os.path.basename(self.path).removesuffix(".sock")  # the Serve replica's id
        return {"batches": self._stats(), "refusals": dict(self.transport_refusals), "handle_calls": calls, "replica": replica}

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket of the same name cannot be ours
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _ServerConn(self), self.path)
        os.chmod(self.path, 0o600)
        if self.tcp_host is not None and self._auth_key:
            key = self._auth_key
            self._tcp_server = await loop.create_server(
                lambda: _ServerConn(self, Handshake(key, client=False)), self.tcp_host, 0
            )
            self.tcp_address = self._tcp_server.sockets[0].getsockname()[:2]

    def _close_listeners(self) -> None:
        for server in (self._server, self._tcp_server):
            if server is not None:
                server.close()

    def in_flight(self) -> int:
        return sum(len(c.tasks) for c in self._conns)

    # -- the replica's max_ongoing_requests, over every caller ----------------------------------
    async def admit(self) -> None:
        """Take a slot for a call Serve routed here, waiting while the replica is full (Serve's
        router counts only the calls it routes); give it back with :meth:`release`."""
        while self.ongoing >= self.limit():
            waiter = asyncio.get_running_loop().create_future()
            self._want_room[waiter] = functools.partial(_wake, waiter)
            try:
                await waiter
            finally:
                self._want_room.pop(waiter, None)
        self.ongoing += 1

    def release(self) -> None:
        """A call finished: its slot goes to whoever waits for one."""
        self.ongoing -= 1
        self._changed.set()
        if self._want_room and self.ongoing < self.limit():
            waiting, self._want_room = self._want_room, {}
            for tell in waiting.values():  # all of them: those that lose the race wait again
                tell()

    def announce_models(self, report: dict[str, Any]) -> None:
        """Tell every caller the models this replica holds or loads (``MODELS``: its report, whose
        ``ids`` route calls), now and on connecting."""
        self._models_frame = frame = dumps((0, MODELS, report))
        for conn in self._conns:
            conn.send(frame)

    # -- stopping --------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """No new connections; every caller is told (``DRAINING``) to send nothing more, and a call
        already on its way is refused (``REJECTED``: the caller sends it elsewhere). Held calls go on."""
        if self.draining:
            return
        self.draining = True
        self._close_listeners()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        for conn in self._conns:
            conn.send(_DRAINING_FRAME)

    def abort(self) -> None:
        """Close at once, from any thread, without telling callers (their calls fail as lost)."""
        self.draining = self.closed = True
        with contextlib.suppress(Exception):
            self._close_listeners()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        for conn in list(self._conns):
            with contextlib.suppress(Exception):  # a loop already closed: the process is ending
                if conn.transport is not None:
                    conn.transport.abort()

    async def drain(self, close_after_s: float = DRAIN_CLOSE_S) -> None:
        """Stop accepting, finish the calls in flight, and let each caller hang up (it does once it
        holds no call here), so no call crosses the close; then close whatever is left."""
        self.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while self._conns:
            if not self.in_flight():
                deadline = deadline or loop.time() + close_after_s
                if loop.time() >= deadline:
                    break
            self._changed.clear()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        self.close()

    def close(self) -> None:
        self.stop_accepting()
        self.closed = True
        for conn in list(self._conns):
            conn.close()


def _unlimited() -> int:
    return sys.maxsize


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


_DRAINING_FRAME = dumps((0, DRAINING, None))
_ROOM_FRAME = dumps((0, ROOM, None))


class _ServerConn(Framed):
    def __init__(self, server: ReplicaServer, auth: Handshake | None = None) -> None:
        super().__init__(server.limits, auth, server.transport_refusals)
        self.server = server
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.credits: dict[int, asyncio.Semaphore] = {}  # per stream: items it may still send

    @property
    def where(self) -> str:
        if self.server.tcp_address is not None and self.transport is not None:
            peer = self.transport.get_extra_info("peername")
            if peer and not isinstance(peer, str):
                return f"from {peer[0]}:{peer[1]} on {self.server.tcp_address[0]}:{self.server.tcp_address[1]}"
        return f"on {self.server.path}"

    def authenticated(self) -> None:
        self.server._conns.add(self)
        if self.server._models_frame is not None:
            self.send(self.server._models_frame)

    def connection_lost(self, exc: Exception | None) -> None:
        # The caller is gone: nobody waits for these results any more (as when Serve cancels).
        super().connection_lost(exc)
        server = self.server
        server._conns.discard(self)
        server._want_room.pop(self, None)
        server._changed.set()
        for task in self.tasks.values():
            task.cancel()

    def frame_received(self, frame: Any) -> None:
        op, rid = frame[0], frame[1]
        if op == CREDIT:
            credit = self.credits.get(rid)
            for _ in range(frame[2] if credit is not None else 0):
                credit.release()  # type: ignore[union-attr]
        elif op == CALL or op == STREAM:
            server = self.server
            if server.draining:
                self.send(dumps((rid, REJECTED, None)))
                return
            if server.ongoing >= server.limit():
                server.refusals += 1
                server._want_room[self] = self._room
                self.send(dumps((rid, BUSY, None)))
                return
            server.ongoing += 1
            run = self._run(rid, frame[2]) if op == CALL else self._run_stream(rid, frame[2])
            task = asyncio.get_running_loop().create_task(run)
            self.tasks[rid] = task
            # Also when a CANCEL read with its CALL stops the task before it ever ran.
            task.add_done_callback(functools.partial(self._finished, rid))
        elif op == CANCEL:
            task = self.tasks.get(rid)
            if task is not None:
                task.cancel()
        elif op == STATS:
            try:
                self.send(dumps((rid, OK, dumps(self.server.stats()))))
            except Exception as exc:  # noqa: BLE001 - a stats failure is answered, not fatal
                self.send(dumps((rid, ERROR, dumps(RuntimeError(str(exc))))))

    def _room(self) -> None:
        self.send(_ROOM_FRAME)

    async def _run(self, rid: int, payload: bytes) -> None:
        """Run one call and answer it; the value is pickled apart from the envelope, so a value
        the caller cannot load fails that call only."""
        header: Any = None
        try:
            header, args, kwargs = read_call(payload)
            value = await self.server._dispatch(header, args, kwargs)
            try:
                status, data = OK, dumps(value)
            except Exception as exc:  # noqa: BLE001 - an unpicklable result fails its call only
                status, data = ERROR, dumps(_unsendable(header, exc))
        except asyncio.CancelledError:
            return  # cancelled by the caller (CANCEL or connection closed): nobody waits for it
        except BaseException as exc:  # noqa: BLE001 - any failure goes back to the caller
            status, data = ERROR, _error_data(exc)
        limit = self._limits.max_bytes
        if len(data) > limit:  # checked here, so the caller gets an error naming the node, not a cut connection
            what = "result" if status == OK else "error"
            status, data = ERROR, dumps(too_large(step_of(header), what, len(data), limit))
        self.send(dumps((rid, status, data)))  # before the call counts as done: a draining server then closes

    async def _run_stream(self, rid: int, payload: bytes) -> None:
        """Run a generator node's call: each item goes out once the caller has room for it (its
        ``CREDIT``), so the generator stays at most ``STREAM_WINDOW`` items ahead of its reader."""
        credit = self.credits[rid] = asyncio.Semaphore(STREAM_WINDOW)
        header: Any = None
        items: Any = None
        try:
            header, args, kwargs = read_call(payload)
            if self.server._stream is None:
                raise RuntimeError("this replica serves no streams over the direct transport")
            items = self.server._stream(header, args, kwargs)
            while True:
                await credit.acquire()  # before the generator's next step: it runs only with room
                try:
                    item = await items.__anext__()
                except StopAsyncIteration:
                    break
                data = dumps(item)
                if len(data) > self._limits.max_bytes:
                    raise too_large(step_of(header), "streamed item", len(data), self._limits.max_bytes)
                self.send(dumps((rid, ITEM, data)))
            status, data = OK, dumps(None)
        except asyncio.CancelledError:
            return  # cancelled by the caller (CANCEL or connection closed): nobody waits for it
        except BaseException as exc:  # noqa: BLE001 - any failure goes back to the caller
            status, data = ERROR, _error_data(exc)
        finally:
            self.credits.pop(rid, None)
            if items is not None:
                with contextlib.suppress(Exception):
                    await items.aclose()
        self.send(dumps((rid, status, data)))

    def _finished(self, rid: int, _task: asyncio.Task[Any]) -> None:
        self.tasks.pop(rid, None)
        self.server.release()


def _error_data(exc: BaseException) -> bytes:
    """A failure, pickled for the caller (its text when the exception itself does not pickle)."""
    try:
        return dumps(exc)
    except Exception as pickling:  # noqa: BLE001
        return dumps(RuntimeError(f"{type(exc).__name__}: {exc} ({pickling})"))


def _unsendable(header: Any, exc: BaseException) -> BaseException:
    from dagserve._errors import NodeError

    step = step_of(header)
    return NodeError(
        f"Node {step!r} returned a value that cannot be sent back ({type(exc).__name__}: {exc}); return "
        "plain data (dicts, lists, numbers, strings, arrays) or a picklable object.",
        node=step,
        error_type=type(exc).__name__,
    )
