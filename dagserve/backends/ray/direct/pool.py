"""The caller side of the direct transport: a :class:`DirectPool` per node sends its calls.

The pool lives on the ingress's event loop: it watches the node's socket directory, connects to
each replica, sends each call to the replica with the fewest calls in flight, holds at most
``max_ongoing_requests`` calls on a replica and queues the rest (up to ``max_queued_requests``,
then :class:`QueueFull`). A call a replica refuses before running it (``BUSY``, ``REJECTED``)
goes to another replica or first in the queue; a replica that goes away fails the calls it held
with :class:`ReplicaLost`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import socket
from typing import Any

from dagserve.backends.ray.direct.protocol import (
    BUSY,
    CALL,
    CANCEL,
    DRAINING,
    OK,
    REJECTED,
    ROOM,
    FrameLimits,
    Framed,
    dumps,
    loads,
    step_of,
    too_large,
)

__all__ = ["SCAN_INTERVAL_S", "DirectCall", "DirectPool", "PoolClosed", "QueueFull", "ReplicaLost"]

log = logging.getLogger("dagserve.ray")

#: How often the ingress looks for replicas that appeared or went away.
SCAN_INTERVAL_S = 0.5


class ReplicaLost(ConnectionError):
    """The replica holding a call went away before answering (the call may have run)."""


class QueueFull(Exception):
    """Every replica holds ``max_ongoing_requests`` calls and the queue holds ``max_queued_requests``."""


class PoolClosed(Exception):
    """The pool was closed (its App shut down, or moved to another event loop); not retried."""


class DirectCall:
    """One call through the pool; await it for the result. ``cancel()`` tells the replica."""

    __slots__ = ("_conn", "_pool", "future", "payload", "rid", "step")

    def __init__(self, pool: DirectPool, payload: bytes, step: str = "?") -> None:
        self._pool = pool
        self.payload = payload
        self.step = step
        self.rid = next(pool._ids)
        self.future: asyncio.Future[Any] = pool._loop.create_future()
        self._conn: _ClientConn | None = None

    @property
    def assigned(self) -> bool:
        """Is a replica running it (not waiting in the pool's queue)?"""
        return self._conn is not None

    def __await__(self) -> Any:
        return self.future.__await__()

    def cancel(self) -> None:
        # The future may already be cancelled (a task awaiting it was): the replica still runs it.
        if not self.future.done():
            self.future.cancel()
        conn = self._conn
        if conn is None:
            with contextlib.suppress(ValueError):  # queued: it no longer counts against the bound
                self._pool._queue.remove(self)
        elif conn.calls.pop(self.rid, None) is not None:
            conn.send(dumps((CANCEL, self.rid)))
            self._pool._slot_freed(conn)

    def _settle(self, status: int, value: bytes) -> None:
        """Resolve with an answer's value, loaded here: one this process cannot load (a class
        only the replica has) fails this call, not the connection."""
        if self.future.done():
            return
        try:
            loaded = loads(value)
        except Exception as exc:  # noqa: BLE001 - any loading failure is this call's failure
            from dagserve._errors import NodeError

            self.future.set_exception(
                NodeError(
                    f"Node {self.step!r} returned a value this process cannot load ({type(exc).__name__}: {exc}); "
                    "return plain data, or install the value's package where the graph is called.",
                    node=self.step,
                    error_type=type(exc).__name__,
                )
            )
            return
        if status == OK:
            self.future.set_result(loaded)
        elif isinstance(loaded, BaseException):
            self.future.set_exception(loaded)
        else:
            self.future.set_exception(RuntimeError(f"replica error: {loaded!r}"))


class _ClientConn(Framed):
    def __init__(self, pool: DirectPool, replica: str) -> None:
        super().__init__(pool.limits)
        self.pool = pool
        self.replica = replica
        self.calls: dict[int, DirectCall] = {}
        self.draining = False
        #: The replica refused a call as full (``BUSY``): nothing is sent until it says ``ROOM``.
        self.full = False

    @property
    def where(self) -> str:
        return f"to replica {self.replica}"

    @property
    def accepting(self) -> bool:
        """May a new call be sent here (open, and the replica is not stopping)?"""
        t = self.transport
        return not self.draining and t is not None and not t.is_closing()

    def submit(self, call: DirectCall) -> None:
        data = dumps((CALL, call.rid, call.payload))
        call._conn = self
        self.calls[call.rid] = call
        self.send(data)

    def frame_received(self, frame: Any) -> None:
        rid, status, value = frame
        if not rid:  # a notice (0 is no call's id)
            if status == DRAINING:
                self.draining = True  # the replica is stopping: no new calls; hang up once ours are back
                if not self.calls:
                    self.close()
            elif status == ROOM:
                self.full = False
                self.pool._slot_freed(self)
            return
        call = self.calls.pop(rid, None)
        if call is None:
            return  # a call cancelled here: its late answer is dropped
        if status == REJECTED or status == BUSY:
            # It never ran: the replica is stopping, or full (other callers hold its slots). Send
            # it to another replica, or first in the queue; a full replica says when it has room.
            if status == REJECTED:
                self.draining = True
            else:
                self.full = True
                self.pool.refusals += 1
            call._conn = None
            self.pool._dispatch(call)
        else:
            call._settle(status, value)
        self.pool._slot_freed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        calls, self.calls = list(self.calls.values()), {}
        why = self._broken_because or "closed the connection"
        for call in calls:
            if not call.future.done():
                call.future.set_exception(ReplicaLost(f"replica {self.replica}: {why}"))
        self.pool._lost(self)


class DirectPool:
    """The ingress side of one node's replicas on this machine (lives on one event loop)."""

    def __init__(
        self,
        directory: str,
        *,
        max_ongoing: int,
        max_queued: int | None,
        loop: asyncio.AbstractEventLoop,
        limits: FrameLimits | None = None,
    ) -> None:
        self.directory = directory
        self.max_ongoing = max_ongoing
        self.max_queued = max_queued
        self.limits = limits or FrameLimits()
        #: Calls a full replica refused (each went to another replica or waited in the queue).
        self.refusals = 0
        self._loop = loop
        self._ids = itertools.count(1)
        self._conns: dict[str, _ClientConn] = {}
        self._ring: list[_ClientConn] = []  # the connections, for _pick
        self._turn = itertools.count()
        self._connecting: set[str] = set()
        self._queue: collections.deque[DirectCall] = collections.deque()
        self._refused: set[str] = set()  # replicas that refused a connection once
        self._foreign: set[str] = set()  # sockets of another user's process: never used
        self._closed = False
        self._scanner = loop.create_task(self._scan_forever())

    # -- calls ---------------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Is at least one replica connected and accepting calls?"""
        return any(c.accepting for c in self._conns.values())

    def call(self, header: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> DirectCall:
        """Send one call (or queue it); raises :class:`QueueFull` when the queue is full."""
        step = step_of(header)
        try:
            payload = dumps((header, args, kwargs))
        except Exception as exc:  # noqa: BLE001 - unpicklable arguments fail this call only
            payload = b""
            error: BaseException | None = exc
        else:
            limit = self.limits.max_bytes
            error = too_large(step, "arguments", len(payload), limit) if len(payload) > limit else None
        call = DirectCall(self, payload, step)
        if error is None and self._closed:
            error = PoolClosed("the pool is closed")
        if error is None:
            try:
                self._dispatch(call, new=True)
            except QueueFull as exc:
                error = exc
        if error is not None:
            call.future.set_exception(error)  # raised where the call is awaited, as with Serve
        return call

    def _dispatch(self, call: DirectCall, *, new: bool = False) -> None:
        if self._closed:
            if not call.future.done():
                call.future.set_exception(PoolClosed("the pool is closed"))
            return
        conn = self._pick()
        if conn is not None and not self._queue:
            conn.submit(call)
            return
        if new and self.max_queued is not None and len(self._queue) >= self.max_queued:
            raise QueueFull
        if new:
            self._queue.append(call)
        else:
            self._queue.appendleft(call)  # a refused call keeps its place at the front
        if conn is not None:
            self._slot_freed(conn)

    def _pick(self) -> _ClientConn | None:
        """The replica with the fewest calls in flight; ties go round in turn (so calls made one
        at a time still spread over every replica)."""
        ring = self._ring
        n = len(ring)
        if not n:
            return None
        start = next(self._turn) % n
        best: _ClientConn | None = None
        for i in range(n):
            conn = ring[(start + i) % n]
            if conn.full or not conn.accepting or len(conn.calls) >= self.max_ongoing:
                continue
            if best is None or len(conn.calls) < len(best.calls):
                best = conn
        return best

    def _slot_freed(self, conn: _ClientConn) -> None:
        queue = self._queue
        while queue and not conn.full and conn.accepting and len(conn.calls) < self.max_ongoing:
            call = queue.popleft()
            if not call.future.done():
                conn.submit(call)
        if conn.draining and not conn.calls:
            conn.close()

    def set_limits(self, max_ongoing: int, max_queued: int | None) -> None:
        """New queue bounds (a node scaled or updated); queued calls take any room at once."""
        self.max_ongoing, self.max_queued = max_ongoing, max_queued
        for conn in self._ring:
            self._slot_freed(conn)

    def _lost(self, conn: _ClientConn) -> None:
        if self._conns.get(conn.replica) is conn:
            del self._conns[conn.replica]
            self._ring = list(self._conns.values())
        if self._queue:
            other = self._pick()
            if other is not None:
                self._slot_freed(other)

    # -- replicas ------------------------------------------------------------------------------
    async def _scan_forever(self) -> None:
        while not self._closed:
            try:
                await self.scan()
            except Exception:  # a failed scan is retried; calls fall back to Serve meanwhile
                log.exception("Looking for replicas in %s failed", self.directory)
            await asyncio.sleep(SCAN_INTERVAL_S)

    async def scan(self) -> None:
        """Connect to new replicas; stop sending to replicas whose socket is gone (stopping)."""
        try:
            names = {e.name[:-5] for e in os.scandir(self.directory) if e.name.endswith(".sock")}
        except FileNotFoundError:
            names = set()
        for replica, conn in list(self._conns.items()):
            if replica not in names and not conn.draining:
                conn.draining = True
                if not conn.calls:
                    conn.close()
        new = [r for r in names if r not in self._conns and r not in self._connecting and r not in self._foreign]
        if new:
            self._connecting.update(new)  # now, so a scan running meanwhile does not try them too
            await asyncio.gather(*(self._connect(r) for r in new))

    async def _connect(self, replica: str) -> None:
        path = os.path.join(self.directory, replica + ".sock")
        try:
            _, conn = await self._loop.create_unix_connection(lambda: _ClientConn(self, replica), path)
        except ConnectionRefusedError:
            # Nobody listens: the replica died without cleaning up (SIGKILL), or is between bind
            # and listen. Refused again a scan later, its socket is stale: remove it.
            if replica in self._refused:
                self._refused.discard(replica)
                with contextlib.suppress(OSError):
                    os.unlink(path)
            else:
                self._refused.add(replica)
            return
        except OSError:
            return  # gone between the listing and the connect
        finally:
            self._connecting.discard(replica)
        self._refused.discard(replica)
        if conn.foreign:
            self._foreign.add(replica)  # dropped before a byte was read; logged once
            return
        if self._closed:
            conn.close()
            return
        self._conns[replica] = conn
        self._ring = list(self._conns.values())
        if self._queue:
            self._slot_freed(conn)

    def close(self) -> None:
        """Stop scanning and close every connection (calls in flight fail with ReplicaLost)."""
        self._closed = True
        self._scanner.cancel()
        for conn in list(self._conns.values()):
            conn.close()
        for call in self._queue:
            if not call.future.done():
                call.future.set_exception(PoolClosed("the application is shutting down"))
        self._queue.clear()

    def abandon(self) -> None:
        """Its event loop is closed: hang up every connection (the replicas see the caller gone)."""
        self._closed = True
        for conn in list(self._conns.values()):
            sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
            fd = sock.fileno() if sock is not None else -1
            if fd >= 0:
                # Through a duplicate: uvloop's transport sockets have no shutdown(), and the
                # duplicate shares the connection, so the replica sees it end either way.
                with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as dup:
                    dup.shutdown(socket.SHUT_RDWR)
        self._conns = {}
        self._ring = []

