"""Direct transport: the ingress calls replicas on its own machine over Unix sockets.

A Serve handle call costs about 1 ms and ~0.6 ms of the caller's CPU on a 2-core machine (the
router, gRPC, cloudpickle); a framed pickle over a Unix socket costs ~35 us. So when the ingress
and a node's replicas share a machine, dagserve sends the calls itself and Serve keeps doing
everything else: it places, starts, health-checks, replaces and scales the replicas.

How it works:

* Every replica listens on a Unix socket named after its Serve replica id, in a directory per
  (Ray cluster, application, deployment) under ``$TMPDIR/dagserve-<uid>/`` (mode 0700: only the
  user that runs Ray can connect, the same trust Ray itself asks for). Nothing listens on a port.
* The ingress keeps a :class:`DirectPool` per node: it watches the directory, connects to each
  replica, sends each call to the replica with the fewest calls in flight, holds at most
  ``max_ongoing_requests`` calls on a replica, and queues the rest (up to ``max_queued_requests``,
  then :class:`QueueFull`). A freed slot goes straight to the oldest queued call.
* The replica enforces ``max_ongoing_requests`` too, over every caller (several ingresses, calls
  Serve routed): a full replica refuses a call (``BUSY``: it never ran; the pool sends it to
  another replica or queues it first in line) and tells the refused caller when a slot frees
  (``ROOM``). Calls Serve routes wait in the replica for a slot (:meth:`ReplicaServer.admit`).
* A replica that Serve stops (scale-down, update) refuses new calls from the moment the stop
  begins (``REJECTED``: the pool sends them elsewhere, they never ran) and finishes the ones it
  holds. A replica that dies fails the calls it held with :class:`ReplicaLost` (retried for nodes
  with ``retries=N``).
* A cancelled call (deadline, timeout, client gone) sends ``CANCEL``: the replica cancels it.

Frames are an 8-byte big-endian length and a pickled envelope. Requests: ``(CALL, id, payload)``
where ``payload`` is the pickled ``(header, args, kwargs)``, ``(CANCEL, id)``, ``(STATS, id)``.
Answers: ``(id, OK | ERROR, value)`` with the value (or exception) pickled apart, so one the caller
cannot load fails its call only; ``(id, REJECTED | BUSY, None)``; notices ``(0, DRAINING, None)``
when the replica stops and ``(0, ROOM, None)`` when it has a slot again. Values pickle with
:mod:`pickle` (protocol 5), and with cloudpickle for what it cannot take (lambdas) or names
``__main__`` (the other process's ``__main__`` is not ours).

Both ends check, before reading a frame, that the other process runs as the same user
(``SO_PEERCRED``), and bound what they read (:class:`FrameLimits`): a call whose arguments or
result pickle larger than ``max_bytes`` fails with a :class:`~dagserve.NodeError` naming the node
(``error_type="FrameTooLarge"``) before anything is sent; a frame announced larger, or one that
does not arrive whole within ``timeout_s``, closes the connection (its calls fail as lost).

This module imports no Ray; the backend decides where it applies (see ``RayBackend``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import itertools
import logging
import os
import pickle
import socket
import stat
import struct
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_FRAME_TIMEOUT_S",
    "DEFAULT_MAX_FRAME_BYTES",
    "DirectCall",
    "DirectPool",
    "FrameLimits",
    "PoolClosed",
    "QueueFull",
    "ReplicaLost",
    "ReplicaServer",
    "dumps",
    "replica_stats",
    "socket_dir",
]

log = logging.getLogger("dagserve.ray")

CALL, CANCEL, STATS = 0, 1, 2
OK, ERROR, REJECTED, DRAINING, BUSY, ROOM = 0, 1, 2, 3, 4, 5
#: Largest pickled arguments or result of one call, by default (``RayBackend(direct_max_frame_bytes=)``).
DEFAULT_MAX_FRAME_BYTES = 256 * 2**20
#: How long a frame may take to arrive whole once its first bytes came, by default.
DEFAULT_FRAME_TIMEOUT_S = 30.0
#: What the envelope (a tuple of small ints around the value's bytes) may add to a frame.
_ENVELOPE_BYTES = 1024
#: How long a stopping replica waits for each ingress to hang up after its last answer.
DRAIN_CLOSE_S = 5.0
_LEN = struct.Struct("!Q")
#: How often the ingress looks for replicas that appeared or went away.
SCAN_INTERVAL_S = 0.5


class ReplicaLost(ConnectionError):
    """The replica holding a call went away before answering (the call may have run)."""


class QueueFull(Exception):
    """Every replica holds ``max_ongoing_requests`` calls and the queue holds ``max_queued_requests``."""


class PoolClosed(Exception):
    """The pool was closed (its App shut down, or moved to another event loop); not retried."""


@dataclass(frozen=True)
class FrameLimits:
    """Bounds on what one connection reads: ``max_bytes`` per call's pickled arguments or result
    (both ends check before sending), ``timeout_s`` for a frame to arrive whole once begun."""

    max_bytes: int = DEFAULT_MAX_FRAME_BYTES
    timeout_s: float = DEFAULT_FRAME_TIMEOUT_S


def dumps(obj: Any) -> bytes:
    """Pickle ``obj``; cloudpickle (from Ray) for what plain pickle cannot take, and for anything
    that names ``__main__``: plain pickle refers to such classes and functions by name, and the
    other process's ``__main__`` is not this one (cloudpickle sends them by value, as Serve does)."""
    try:
        data = pickle.dumps(obj, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError):
        data = b""
    if data and b"__main__" not in data:
        return data
    from ray import cloudpickle

    return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]


def socket_dir(cluster: str, app: str, deployment: str) -> str | None:
    """The directory holding the sockets of ``deployment``'s replicas, created private (0700).

    ``None`` when it is not private (another user owns it, or others may write to it): the
    transport is then off and calls go through Serve. The path stays short, as Unix socket paths must (< 108 bytes).
    """
    root = os.path.join(tempfile.gettempdir(), f"dagserve-{os.getuid()}")
    key = hashlib.sha1(f"{cluster}\0{app}\0{deployment}".encode()).hexdigest()[:16]
    path = os.path.join(root, key)
    try:
        for p in (root, path):
            with contextlib.suppress(FileExistsError):
                os.mkdir(p, 0o700)
            st = os.lstat(p)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                # Never repaired: another user could have put a socket in it while it was open.
                log.warning(
                    "Not using the direct transport: %s is not a private (0700) directory of this user; "
                    "remove it to let dagserve create it again.",
                    p,
                )
                return None
    except OSError as exc:
        log.warning("Not using the direct transport: cannot create %s (%s).", path, exc)
        return None
    return path


class _Framed(asyncio.Protocol):
    """Length-prefixed pickles both ways; writes made in one loop iteration go out in one syscall.

    Reads nothing from a process of another user (the connection is dropped at once: ``foreign``),
    no frame announced larger than the limits allow, and no frame that stalls past its deadline.
    """

    def __init__(self, limits: FrameLimits) -> None:
        self.transport: asyncio.Transport | None = None
        self.foreign = False
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._limits = limits
        self._max_frame = limits.max_bytes + _ENVELOPE_BYTES
        self._partial_since: float | None = None  # when the frame now arriving began
        self._stall: asyncio.TimerHandle | None = None
        self._broken_because = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._loop = asyncio.get_running_loop()
        if not _same_user(transport):
            # Frames are pickles: loading one from another user's process would run its code here.
            log.warning("Direct transport: refused a connection %s: the other process runs as another user.", self.where)
            self.foreign = True
            transport.abort()
            return
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    @property
    def where(self) -> str:
        """This connection, for log records and errors."""
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        frames = []
        size = _LEN.size
        while end - pos >= size:
            (n,) = _LEN.unpack_from(buf, pos)
            if n > self._max_frame:
                self._break(f"a frame of {n} bytes was announced, over the limit of {self._limits.max_bytes} bytes")
                return
            if end - pos - size < n:
                break
            frames.append(bytes(buf[pos + size : pos + size + n]))
            pos += size + n
        if pos:
            del buf[:pos]
        if buf:  # a frame has begun: it must arrive whole within the deadline
            if pos or self._partial_since is None:
                self._partial_since = self._loop.time()
            if self._stall is None:
                self._stall = self._loop.call_later(self._limits.timeout_s, self._check_stall)
        else:
            self._partial_since = None  # a pending check finds nothing to do
        for frame in frames:
            # The envelope is ours (a tuple of ints and bytes): one that fails to load means the
            # stream is broken, and the connection goes (values inside are loaded per call).
            self.frame_received(pickle.loads(frame))

    def frame_received(self, frame: Any) -> None:
        raise NotImplementedError

    def _check_stall(self) -> None:
        self._stall = None
        since = self._partial_since
        if since is None or self.transport is None:
            return
        left = since + self._limits.timeout_s - self._loop.time()
        if left > 0:
            self._stall = self._loop.call_later(left, self._check_stall)
            return
        self._break(
            f"a frame stalled: {len(self._buf)} bytes of it came, then not the rest within "
            f"{self._limits.timeout_s:g} s"
        )

    def _break(self, why: str) -> None:
        """The stream cannot go on (too large, stalled): drop the connection."""
        log.warning("Direct transport: closing the connection %s: %s.", self.where, why)
        self._broken_because = why
        self._buf.clear()
        self._partial_since = None
        if self.transport is not None:
            self.transport.abort()

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._out.append(_LEN.pack(len(data)))
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def close(self) -> None:
        """Write what is pending, then close (asyncio sends buffered bytes before closing)."""
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.close()

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(b"".join(out))


# ------------------------------------------------------------------------------------------------
# Replica side
# ------------------------------------------------------------------------------------------------

Dispatch = Callable[[Any, tuple[Any, ...], dict[str, Any]], Awaitable[Any]]


class ReplicaServer:
    """Serves one replica's calls on a Unix socket (runs on the replica's event loop).

    ``dispatch(header, args, kwargs)`` runs one call (the replica's node code); ``stats()``
    answers ``STATS`` frames (batch counts). ``limit()`` is the replica's ``max_ongoing_requests``
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
    ) -> None:
        self.path = path
        self._dispatch = dispatch
        self._stats = stats
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
        # Who waits for a free slot (a refused connection, a call Serve routed), told when one frees.
        self._want_room: dict[Any, Callable[[], None]] = {}
        self._changed = asyncio.Event()  # a call finished or a caller hung up (for drain)

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket of the same name cannot be ours
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _ServerConn(self), self.path)
        os.chmod(self.path, 0o600)

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

    # -- stopping --------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """No new connections; every caller is told (``DRAINING``) to send nothing more, and a call
        already on its way is refused (``REJECTED``: the caller sends it elsewhere). Held calls go on."""
        if self.draining:
            return
        self.draining = True
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        for conn in self._conns:
            conn.send(_DRAINING_FRAME)

    def abort(self) -> None:
        """Close at once, from any thread, without telling callers (their calls fail as lost)."""
        self.draining = self.closed = True
        with contextlib.suppress(Exception):
            if self._server is not None:
                self._server.close()
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


_DRAINING_FRAME = pickle.dumps((0, DRAINING, None), protocol=5)
_ROOM_FRAME = pickle.dumps((0, ROOM, None), protocol=5)


class _ServerConn(_Framed):
    def __init__(self, server: ReplicaServer) -> None:
        super().__init__(server.limits)
        self.server = server
        self.tasks: dict[int, asyncio.Task[Any]] = {}

    @property
    def where(self) -> str:
        return f"on {self.server.path}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.transport is not None:
            self.server._conns.add(self)

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
        if op == CALL:
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
            task = asyncio.get_running_loop().create_task(self._run(rid, frame[2]))
            self.tasks[rid] = task
            # Also when a CANCEL read with its CALL stops the task before it ever ran.
            task.add_done_callback(functools.partial(self._finished, rid))
        elif op == CANCEL:
            task = self.tasks.get(rid)
            if task is not None:
                task.cancel()
        elif op == STATS:
            try:
                self.send(dumps((rid, OK, dumps(self.server._stats()))))
            except Exception as exc:  # noqa: BLE001 - a stats failure is answered, not fatal
                self.send(dumps((rid, ERROR, dumps(RuntimeError(str(exc))))))

    def _room(self) -> None:
        self.send(_ROOM_FRAME)

    async def _run(self, rid: int, payload: bytes) -> None:
        """Run one call and answer it; the value is pickled apart from the envelope, so a value
        the caller cannot load fails that call only."""
        header: Any = None
        try:
            header, args, kwargs = pickle.loads(payload)
            value = await self.server._dispatch(header, args, kwargs)
            try:
                status, data = OK, dumps(value)
            except Exception as exc:  # noqa: BLE001 - an unpicklable result fails its call only
                status, data = ERROR, dumps(_unsendable(header, exc))
        except asyncio.CancelledError:
            return  # cancelled by the caller (CANCEL or connection closed): nobody waits for it
        except BaseException as exc:  # noqa: BLE001 - any failure goes back to the caller
            status = ERROR
            try:
                data = dumps(exc)
            except Exception as pickling:  # noqa: BLE001
                data = dumps(RuntimeError(f"{type(exc).__name__}: {exc} ({pickling})"))
        limit = self._limits.max_bytes
        if len(data) > limit:  # checked here, so the caller gets an error naming the node, not a cut connection
            what = "result" if status == OK else "error"
            status, data = ERROR, dumps(_too_large(_step(header), what, len(data), limit))
        self.send(dumps((rid, status, data)))  # before the call counts as done: a draining server then closes

    def _finished(self, rid: int, _task: asyncio.Task[Any]) -> None:
        self.tasks.pop(rid, None)
        self.server.release()


def _same_user(transport: asyncio.BaseTransport) -> bool:
    """Is the peer process run by this user? (Linux ``SO_PEERCRED``; elsewhere the 0700 directory
    and 0600 socket are the guard.) Frames are pickles: only our own processes may send them.
    Both ends ask it before reading a frame."""
    sock = transport.get_extra_info("socket")
    peercred = getattr(socket, "SO_PEERCRED", None)
    if sock is None or peercred is None:
        return True
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
    return bool(uid == os.getuid())


def _step(header: Any) -> str:
    """The step name a call's header carries (``"?"`` when it cannot be read)."""
    return header[1] if isinstance(header, tuple) and len(header) > 1 else "?"


def _unsendable(header: Any, exc: BaseException) -> BaseException:
    from dagserve._errors import NodeError

    step = _step(header)
    return NodeError(
        f"Node {step!r} returned a value that cannot be sent back ({type(exc).__name__}: {exc}); return "
        "plain data (dicts, lists, numbers, strings, arrays) or a picklable object.",
        node=step,
        error_type=type(exc).__name__,
    )


def _too_large(step: str, what: str, size: int, limit: int) -> BaseException:
    from dagserve._errors import NodeError

    return NodeError(
        f"Node {step!r}: the {what} of a call pickled to {size} bytes, over the direct transport's limit of "
        f"{limit} bytes per call. Send less (a path or URL instead of the bytes), or raise the limit: "
        "RayBackend(direct_max_frame_bytes=...) or DAGSERVE_DIRECT_MAX_FRAME_BYTES.",
        node=step,
        error_type="FrameTooLarge",
    )


# ------------------------------------------------------------------------------------------------
# Ingress side
# ------------------------------------------------------------------------------------------------


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
            loaded = pickle.loads(value)
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


class _ClientConn(_Framed):
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
        step = _step(header)
        try:
            payload = dumps((header, args, kwargs))
        except Exception as exc:  # noqa: BLE001 - unpicklable arguments fail this call only
            payload = b""
            error: BaseException | None = exc
        else:
            limit = self.limits.max_bytes
            error = _too_large(step, "arguments", len(payload), limit) if len(payload) > limit else None
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


def replica_stats(directory: str, timeout_s: float = 2.0) -> list[Any]:
    """Ask every replica listening in ``directory`` for its stats (blocking; not on an event loop).

    Opens its own short connections, so it works from any thread, whatever loop the calls use.
    """

    async def ask(path: str) -> Any:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            if not _same_user(writer.transport):
                return None  # its answer is a pickle: not from another user's process
            data = dumps((STATS, 1))
            writer.write(_LEN.pack(len(data)) + data)
            (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
            _, status, value = pickle.loads(await reader.readexactly(n))
            return pickle.loads(value) if status == OK else None
        finally:
            writer.close()

    async def ask_all() -> list[Any]:
        try:
            paths = [e.path for e in os.scandir(directory) if e.name.endswith(".sock")]
        except FileNotFoundError:
            return []
        if not paths:
            return []
        tasks = [asyncio.ensure_future(ask(p)) for p in paths]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        return [t.result() for t in done if t.exception() is None and t.result() is not None]

    return asyncio.run(ask_all())
