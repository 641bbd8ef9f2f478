"""The caller side of the direct transport: a :class:`DirectPool` per node sends its calls.

The pool lives on the ingress's event loop: it watches the node's socket directory (replicas on
this Ray node) and, when given, the listing of replicas on other Ray nodes (reached over TCP
after the token handshake, :mod:`.auth`), connects to each replica, sends each call to a replica
on this Ray node with room or else the one with the fewest calls in flight, holds at most
``max_ongoing_requests`` calls on a replica and queues the rest (up to ``max_queued_requests``,
then :class:`~dagserve.runtime.replica_slots.QueueFull`); the slots and the queue are
:class:`~dagserve.runtime.replica_slots.ReplicaSlots`, as in the local backend. A call a replica
refuses before running it (``BUSY``, ``REJECTED``) goes to another replica or first in the queue;
a replica that goes away fails the calls it held with :class:`ReplicaLost`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from dagserve.backends.ray.direct.auth import Handshake
from dagserve.backends.ray.direct.frames import (
    BUSY,
    CALL,
    CANCEL,
    CREDIT,
    DRAINING,
    ITEM,
    MODELS,
    OK,
    REJECTED,
    ROOM,
    STATS,
    STREAM,
    STREAM_WINDOW,
    Framed,
    FrameLimits,
    call_payload,
    dumps,
    loads,
    step_of,
    too_large,
)
from dagserve.runtime.replica_slots import QueueFull, ReplicaSlots

__all__ = ["SCAN_INTERVAL_S", "Address", "DirectCall", "DirectPool", "DirectStream", "PoolClosed", "Remote", "ReplicaLost"]

log = logging.getLogger("dagserve.ray")

#: How often the ingress looks for replicas that appeared or went away.
SCAN_INTERVAL_S = 0.5
#: How long a TCP connection and its handshake may take (a scan waits for it).
_CONNECT_TIMEOUT_S = 5.0

#: Where a replica listens: its Unix socket's path (this Ray node), or ``(host, port)`` (another).
Address = str | tuple[str, int]
#: Lists the replicas on other Ray nodes and their TCP addresses, by replica id.
Remote = Callable[[], Awaitable[dict[str, tuple[str, int]]]]


class ReplicaLost(ConnectionError):
    """The replica holding a call went away before answering (the call may have run)."""


class PoolClosed(Exception):
    """The pool was closed (its App shut down, or moved to another event loop); not retried."""


class DirectCall:
    """One call through the pool; await it for the result. ``cancel()`` tells the replica."""

    __slots__ = ("_conn", "_pool", "future", "model", "payload", "rid", "step")
    #: The request op it is sent with.
    op = CALL

    def __init__(self, pool: DirectPool, payload: bytes, step: str = "?", model: str | None = None) -> None:
        self._pool = pool
        self.payload = payload
        self.step = step
        #: A multiplexed node's model id: the call goes to a replica holding it (ReplicaSlots).
        self.model = model
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
            self._pool._slots.forget(self)  # queued: it no longer counts against the bound
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


class DirectStream(DirectCall):
    """A generator node's call through the pool: an async iterator of its items.

    The replica sends at most ``STREAM_WINDOW`` items ahead; each item read here gives it room for
    one more (``CREDIT``, sent in groups), so a slow reader slows the generator. The future settles
    when the stream ends (its error, if it failed). ``cancel()`` (or ``aclose()``) stops it.
    """

    __slots__ = ("_granted", "_items", "_wake")
    op = STREAM

    def __init__(self, pool: DirectPool, payload: bytes, step: str = "?", model: str | None = None) -> None:
        super().__init__(pool, payload, step, model)
        self._items: collections.deque[bytes] = collections.deque()
        self._wake: asyncio.Future[None] | None = None
        self._granted = 0  # items read since the last CREDIT

    def _item(self, data: bytes) -> None:
        self._items.append(data)
        self._poke()

    def _settle(self, status: int, value: bytes) -> None:
        super()._settle(status, value)
        self._poke()

    def _poke(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def __aiter__(self) -> DirectStream:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            if self.future.done():
                self.future.result()  # the stream's error, if it failed
                raise StopAsyncIteration
            self._wake = self._pool._loop.create_future()
            await self._wake
        data = self._items.popleft()
        self._granted += 1
        conn = self._conn
        if self._granted >= STREAM_WINDOW // 2 and conn is not None and conn.calls.get(self.rid) is self:
            conn.send(dumps((CREDIT, self.rid, self._granted)))
            self._granted = 0
        return loads(data)

    async def aclose(self) -> None:
        if not self.future.done():
            self.cancel()


class _StatsCall(DirectCall):
    """A ``STATS`` request to one replica (its batch counts), answered at once."""

    __slots__ = ()
    op = STATS


class _ClientConn(Framed):
    def __init__(self, pool: DirectPool, replica: str, auth: Handshake | None = None) -> None:
        super().__init__(pool.limits, auth, pool.transport_refusals)
        self.pool = pool
        self.replica = replica
        #: Over TCP to a replica on another Ray node (else a Unix socket on this one).
        self.cross_node = auth is not None
        self.calls: dict[int, DirectCall] = {}
        self.draining = False
        #: The replica refused a call as full (``BUSY``): nothing is sent until it says ``ROOM``.
        self.full = False
        #: A multiplexed node's model ids the replica holds or loads, and its last report
        #: (``MODELS`` notices: backends/ray/replica_models.py).
        self.models: frozenset[str] = frozenset()
        self.model_report: dict[str, Any] | None = None

    @property
    def where(self) -> str:
        return f"to replica {self.replica}"

    @property
    def accepting(self) -> bool:
        """May a new call be sent here (open, and the replica is not stopping)?"""
        t = self.transport
        return not self.draining and t is not None and not t.is_closing()

    @property
    def ongoing(self) -> int:
        """Calls sent here and not answered yet (this pool's slots on the replica)."""
        return len(self.calls)

    @property
    def takes_calls(self) -> bool:
        """May a call be sent here now, the count aside (accepting, and not full for other callers)?"""
        return not self.full and self.accepting

    def submit(self, call: DirectCall) -> None:
        data = dumps((call.op, call.rid, call.payload))
        call._conn = self
        self.calls[call.rid] = call
        self.send(data)

    def frame_received(self, frame: Any) -> None:
        rid, status, value = frame
        if status == ITEM:  # one item of a stream (DirectStream); the stream goes on
            stream = self.calls.get(rid)
            if isinstance(stream, DirectStream):
                stream._item(value)
            return
        if not rid:  # a notice (0 is no call's id)
            if status == DRAINING:
                self.draining = True  # the replica is stopping: no new calls; hang up once ours are back
                if not self.calls:
                    self.close()
            elif status == ROOM:
                self.full = False
                self.pool._slot_freed(self)
            elif status == MODELS:
                self.model_report = value
                # Calls sent here for a model it has not begun to load yet still count as its.
                self.models = frozenset(value.get("ids", ())) | {c.model for c in self.calls.values() if c.model}
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
                if isinstance(call, DirectStream):
                    call._poke()  # a reader waiting for its next item learns of it now
        self.pool._lost(self)


def _submit(call: DirectCall, conn: _ClientConn) -> None:
    """A queued call gets a freed slot on ``conn``, unless it was cancelled meanwhile."""
    if not call.future.done():
        conn.submit(call)


class DirectPool:
    """The caller's side of one node's replicas (lives on one event loop): dagserve's direct
    transport, a :class:`~dagserve.backends.ray.transports.Transport`."""

    kind = "direct"
    #: Its calls take values: another call's Serve response cannot travel over its sockets.
    takes_responses = False

    def __init__(
        self,
        directory: str,
        *,
        max_ongoing: int,
        max_queued: int | None,
        loop: asyncio.AbstractEventLoop,
        limits: FrameLimits | None = None,
        remote: Remote | None = None,
        auth_key: bytes | None = None,
        on_stale: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = directory
        self.limits = limits or FrameLimits()
        #: Calls a full replica refused (each went to another replica or waited in the queue).
        self.refusals = 0
        #: What this pool's connections refused, by reason (protocol.REFUSAL_REASONS).
        self.transport_refusals: collections.Counter[str] = collections.Counter()
        self._loop = loop
        self._ids = itertools.count(1)
        self._conns: dict[str, _ClientConn] = {}
        # The connections (replaced whole as they come and go), their slots, the queued calls.
        self._slots: ReplicaSlots[_ClientConn, DirectCall] = ReplicaSlots(
            _submit, max_ongoing=max_ongoing, max_queued=max_queued, take_turns=True
        )
        # Replicas on other Ray nodes: ``remote()`` lists their TCP addresses (by replica id), each
        # connection passes the token handshake with ``auth_key``; ``on_stale(replica)`` forgets
        # an address nobody listens on any more. Without ``remote``, only this node's sockets.
        self._remote = remote if auth_key else None
        self._auth_key = auth_key
        self._on_stale = on_stale
        self._connecting: set[str] = set()
        self._refused: set[str] = set()  # replicas that refused a connection once
        self._foreign: set[str] = set()  # sockets of another user's process, or peers failing the handshake
        self._closed = False
        self._scanner = loop.create_task(self._scan_forever())

    # -- calls ---------------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Is at least one replica connected and accepting calls?"""
        return any(c.accepting for c in self._conns.values())

    def stream(self, header: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> DirectStream:
        """Send a generator node's call (or queue it): its items, as an async iterator."""
        return self.call(header, args, kwargs, kind=DirectStream)  # type: ignore[return-value]

    def call(
        self,
        header: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        kind: type[DirectCall] = DirectCall,
        model: str | None = None,
    ) -> DirectCall:
        """Send one call (or queue it); raises :class:`QueueFull` when the queue is full. ``model``:
        a multiplexed node's model id, which chooses the replica."""
        step = step_of(header)
        try:
            payload = call_payload(header, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - unpicklable arguments fail this call only
            payload = b""
            error: BaseException | None = exc
        else:
            limit = self.limits.max_bytes
            error = too_large(step, "arguments", len(payload), limit) if len(payload) > limit else None
        call = kind(self, payload, step, model)
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
        """Send ``call`` to a replica, or queue it (a ``new`` one last, within the bound: else
        :class:`QueueFull`; one a replica refused first, as it was sent before the others)."""
        if self._closed:
            if not call.future.done():
                call.future.set_exception(PoolClosed("the pool is closed"))
            return
        slots = self._slots
        conn = slots.for_new_call(call.model)
        if conn is not None:
            conn.submit(call)
        elif new:
            slots.wait(call)
        else:
            slots.wait_first(call)

    @property
    def max_ongoing(self) -> int:
        """Calls this pool holds on one replica at most (the node's ``max_ongoing_requests``)."""
        return self._slots.max_ongoing

    @property
    def max_queued(self) -> int | None:
        """Calls that may wait here for a slot (the node's ``max_queued_requests``)."""
        return self._slots.max_queued

    def _slot_freed(self, conn: _ClientConn) -> None:
        """``conn`` has room again (an answer, a cancel, a ``ROOM`` notice): queued calls take it;
        a stopping replica is hung up on once it holds none of ours."""
        self._slots.freed(conn)
        if conn.draining and not conn.calls:
            conn.close()

    def set_limits(self, max_ongoing: int, max_queued: int | None) -> None:
        """New queue bounds (a node scaled or updated); queued calls take any room at once."""
        self._slots.max_ongoing, self._slots.max_queued = max_ongoing, max_queued
        self._slots.wake()
        for conn in self._slots.replicas:
            if conn.draining and not conn.calls:
                conn.close()

    def _lost(self, conn: _ClientConn) -> None:
        if self._conns.get(conn.replica) is conn:
            del self._conns[conn.replica]
            self._replicas_changed()
        else:
            self._slots.wake()

    # -- replicas ------------------------------------------------------------------------------
    async def _scan_forever(self) -> None:
        while not self._closed:
            try:
                await self.scan()
            except Exception:  # a failed scan is retried; calls fall back to Serve meanwhile
                log.exception("Looking for replicas in %s failed", self.directory)
            await asyncio.sleep(SCAN_INTERVAL_S)

    async def scan(self) -> None:
        """Connect to new replicas; stop sending to replicas that are gone from the listing (stopping)."""
        found: dict[str, Address] = {}
        if self._remote is not None:
            found.update(await self._remote())
        try:
            found.update(
                {e.name[:-5]: e.path for e in os.scandir(self.directory) if e.name.endswith(".sock")}
            )
        except FileNotFoundError:
            pass
        for replica, conn in list(self._conns.items()):
            if replica not in found and not conn.draining:
                conn.draining = True
                if not conn.calls:
                    conn.close()
        new = [r for r in found if r not in self._conns and r not in self._connecting and r not in self._foreign]
        if new:
            self._connecting.update(new)  # now, so a scan running meanwhile does not try them too
            await asyncio.gather(*(self._connect(r, found[r]) for r in new))

    async def _open(self, replica: str, address: Address) -> _ClientConn:
        """A connection to ``replica``: its Unix socket (a path), or TCP (``(host, port)``) with the
        token handshake, done within ``_CONNECT_TIMEOUT_S`` (or the frame timeout, if shorter)."""
        loop = self._loop
        if isinstance(address, str):
            _, conn = await loop.create_unix_connection(lambda: _ClientConn(self, replica), address)
            return conn
        key = self._auth_key
        assert key is not None  # remote addresses are listed only with a key
        async with asyncio.timeout(min(_CONNECT_TIMEOUT_S, self.limits.timeout_s)):
            _, conn = await loop.create_connection(
                lambda: _ClientConn(self, replica, Handshake(key, client=True)), *address
            )
            assert conn.ready is not None  # set when the connection was made
            await conn.ready  # False: refused (conn.foreign) or closed during the handshake
        return conn

    async def _connect(self, replica: str, address: Address) -> None:
        try:
            conn = await self._open(replica, address)
        except (OSError, TimeoutError) as exc:
            if isinstance(address, str) and not isinstance(exc, (ConnectionRefusedError, TimeoutError)):
                return  # a socket gone between the listing and the connect
            # Nobody listens: the replica died without cleaning up (SIGKILL), or is between bind
            # and listen; across nodes also a node that is gone (the connect or the handshake
            # times out, the host is unreachable). Failed again a scan later, its address is
            # stale: remove it, so a dead node costs two scans' connect timeouts, not every scan's.
            if replica in self._refused:
                self._refused.discard(replica)
                self._stale(replica, address)
            else:
                self._refused.add(replica)
            return
        finally:
            self._connecting.discard(replica)
        self._refused.discard(replica)
        if conn.foreign:
            self._foreign.add(replica)  # dropped before a frame was read; logged once
            return
        if conn.transport is None:
            return  # closed during the handshake: tried again at the next scan
        if self._closed:
            conn.close()
            return
        self._conns[replica] = conn
        self._replicas_changed()

    def _stale(self, replica: str, address: Address) -> None:
        if isinstance(address, str):
            with contextlib.suppress(OSError):
                os.unlink(address)
        elif self._on_stale is not None:
            self._on_stale(replica)

    def _replicas_changed(self) -> None:
        """The connections changed: the slots take the new list (this node's replicas preferred)."""
        conns = list(self._conns.values())
        near = [c for c in conns if not c.cross_node]
        self._slots.replicas = conns
        self._slots.near = near if 0 < len(near) < len(conns) else []
        self._slots.wake()

    async def stats(self, timeout_s: float = 2.0) -> list[Any]:
        """Each connected replica's stats (``batches``, ``refusals``: ReplicaServer.stats), on this node and across nodes alike;
        replicas that do not answer within ``timeout_s`` are left out."""
        calls = []
        for conn in list(self._conns.values()):
            if conn.accepting:
                call = _StatsCall(self, b"", "stats")
                conn.submit(call)
                calls.append(call)
        if not calls:
            return []
        done, pending = await asyncio.wait([c.future for c in calls], timeout=timeout_s)
        for c in calls:
            if c.future in pending:
                c.cancel()
        return [f.result() for f in done if f.exception() is None]

    def model_reports(self) -> dict[str, dict[str, Any] | None]:
        """Per connected replica, the models it last reported (a multiplexed node; ``None``: none yet)."""
        return {conn.replica: conn.model_report for conn in self._conns.values() if conn.accepting}

    def transports(self) -> dict[str, int]:
        """How many replicas this pool reaches, by way: ``"local socket"`` and ``"cross-node"``."""
        out: dict[str, int] = {}
        for conn in self._conns.values():
            if conn.accepting:
                kind = "cross-node" if conn.cross_node else "local socket"
                out[kind] = out.get(kind, 0) + 1
        return out

    def close(self) -> None:
        """Stop scanning and close every connection (calls in flight fail with ReplicaLost)."""
        self._closed = True
        self._scanner.cancel()
        for conn in list(self._conns.values()):
            conn.close()
        waiters = self._slots.waiters
        for call in waiters:
            if not call.future.done():
                call.future.set_exception(PoolClosed("the application is shutting down"))
        waiters.clear()

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
        self._slots.replicas = []
        self._slots.near = []

