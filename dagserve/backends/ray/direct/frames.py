"""The direct transport's wire protocol: op codes, frames and their bounds, pickling, peer check.

Frames are an 8-byte big-endian length (:data:`FRAME_LENGTH`) and a pickled envelope; both ends
read them through :class:`Framed`, which reads nothing from another user's process
(:func:`same_user`), no frame announced over :class:`FrameLimits` and none that stalls. This is the
one module of dagserve that unpickles (:func:`loads`): frames come only from this user's own
processes (0700 directory, 0600 socket, peer uid checked) or, over TCP between Ray nodes, from a
peer that proved it holds the cluster's Ray token (:mod:`.auth`) before its first frame is read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

from dagserve.backends.ray.header import CallHeader
from dagserve.backends.ray.direct.auth import AuthFailed, Handshake

__all__ = [
    "BUSY",
    "CALL",
    "CANCEL",
    "CREDIT",
    "DEFAULT_FRAME_TIMEOUT_S",
    "DEFAULT_MAX_FRAME_BYTES",
    "DRAINING",
    "ERROR",
    "FRAME_LENGTH",
    "ITEM",
    "MODELS",
    "OK",
    "REJECTED",
    "ROOM",
    "STATS",
    "STREAM",
    "STREAM_WINDOW",
    "FrameLimits",
    "Framed",
    "call_payload",
    "dumps",
    "loads",
    "read_call",
    "same_user",
    "step_of",
    "too_large",
    "REFUSAL_REASONS",
]

log = logging.getLogger("dagserve.ray")

#: Requests: ``(CALL, id, payload)``, ``(CANCEL, id)``, ``(STATS, id)``; a generator node's call
#: ``(STREAM, id, payload)``, and ``(CREDIT, id, n)``: the caller read ``n`` more of its items.
CALL, CANCEL, STATS, STREAM, CREDIT = 0, 1, 2, 3, 4
#: Answers ``(id, status, value)``; notices ``(0, DRAINING | ROOM, None)`` and ``(0, MODELS, report)``
#: (a multiplexed node's replica: a dict whose ``ids`` are the model ids it holds or loads); a stream's items
#: ``(id, ITEM, value)``, then its end ``(id, OK, None)`` or ``(id, ERROR, error)``.
OK, ERROR, REJECTED, DRAINING, BUSY, ROOM, ITEM, MODELS = 0, 1, 2, 3, 4, 5, 6, 7
#: Items a replica sends of a stream before its caller grants more (``CREDIT``): the most a stream
#: holds between a generator and its reader, whatever the stream's length.
STREAM_WINDOW = 8
#: Largest pickled arguments or result of one call, by default (``RayBackend(direct_max_frame_bytes=)``).
DEFAULT_MAX_FRAME_BYTES = 256 * 2**20
#: How long a frame may take to arrive whole once its first bytes came, by default.
DEFAULT_FRAME_TIMEOUT_S = 30.0
#: What the envelope (a tuple of small ints around the value's bytes) may add to a frame.
_ENVELOPE_BYTES = 1024
#: The length that precedes every frame.
FRAME_LENGTH = struct.Struct("!Q")


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


def call_payload(header: CallHeader, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A call's frame body: its header as a plain tuple, then its arguments. (A ``NamedTuple``
    pickles with its class, by name: 1.7 µs against 0.4 µs for the tuple, on each call.)"""
    return dumps((tuple(header), args, kwargs))


def read_call(payload: bytes) -> tuple[CallHeader, tuple[Any, ...], dict[str, Any]]:
    """What :func:`call_payload` wrote: the header (a :class:`CallHeader` again), args, kwargs."""
    header, args, kwargs = loads(payload)
    return CallHeader(*header), args, kwargs


def loads(data: bytes) -> Any:
    """Unpickle what one of this user's own processes sent (only ever called on frames read from a
    peer :func:`same_user` accepted)."""
    return pickle.loads(data)


def same_user(transport: asyncio.BaseTransport) -> bool:
    """Is the peer process run by this user? (Linux ``SO_PEERCRED``; elsewhere the 0700 directory
    and 0600 socket are the guard.) Frames are pickles: only our own processes may send them.
    Both ends ask it before reading a frame."""
    sock = transport.get_extra_info("socket")
    peercred = getattr(socket, "SO_PEERCRED", None)
    if sock is None or peercred is None:
        return True
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
    return bool(uid == os.getuid())


def step_of(header: Any) -> str:
    """The step name a call's header carries (``"?"`` when it cannot be read)."""
    return header.step if isinstance(header, CallHeader) else "?"


def too_large(step: str, what: str, size: int, limit: int) -> BaseException:
    """The error of a call whose ``what`` (arguments, result, error) pickled over the limit."""
    from dagserve._errors import NodeError

    return NodeError(
        f"Node {step!r}: the {what} of a call pickled to {size} bytes, over the direct transport's limit of "
        f"{limit} bytes per call. Send less (a path or URL instead of the bytes), or raise the limit: "
        "RayBackend(direct_max_frame_bytes=...) or DAGSERVE_DIRECT_MAX_FRAME_BYTES.",
        node=step,
        error_type="FrameTooLarge",
    )


#: Why the direct transport refused a peer or dropped a connection, as counted (and exported as
#: ``dagserve_direct_transport_refusals_total``): a process of another user on a local socket, a
#: failed or missing token handshake (TCP), a frame over the size limit, a frame that stalled.
REFUSAL_REASONS = ("other_user", "bad_handshake", "handshake_timeout", "frame_too_large", "frame_stalled")


class Framed(asyncio.Protocol):
    """Length-prefixed pickles both ways; writes made in one loop iteration go out in one syscall.

    Reads nothing from a process of another user (the connection is dropped at once: ``foreign``),
    no frame announced larger than the limits allow, and no frame that stalls past its deadline.
    With ``auth`` (a TCP connection to or from another Ray node, where the peer's user is unknown),
    the peer must first pass the token handshake (:mod:`.auth`): until then only its raw bytes are
    read, nothing is sent but the handshake's, and a failure drops the connection (``foreign``).
    ``ready`` resolves once frames may flow (``True``), or with ``False`` when the peer was refused.
    """

    def __init__(
        self, limits: FrameLimits, auth: Handshake | None = None, refusals: Counter[str] | None = None
    ) -> None:
        self.transport: asyncio.Transport | None = None
        self.foreign = False
        #: Where this connection counts what it refuses, by reason (:data:`REFUSAL_REASONS`).
        self._refusals = refusals
        self._auth = auth
        self.ready: asyncio.Future[bool] | None = None
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
        self.ready = self._loop.create_future()
        if self._auth is not None:
            self.transport = transport  # type: ignore[assignment]
            transport.write(self._auth.hello)  # type: ignore[attr-defined]
            self._stall = self._loop.call_later(self._limits.timeout_s, self._auth_timeout)
            return
        if not same_user(transport):
            # Frames are pickles: loading one from another user's process would run its code here.
            log.warning("Direct transport: refused a connection %s: the other process runs as another user.", self.where)
            self._count("other_user")
            self.foreign = True
            self.ready.set_result(False)
            transport.abort()
            return
        self.transport = transport  # type: ignore[assignment]
        self.ready.set_result(True)
        self.authenticated()

    def _authenticate(self, data: bytes) -> bytes:
        """Feed the handshake; what came after it (frames), once done. Never unpickles."""
        auth = self._auth
        assert auth is not None and self.transport is not None  # only called while authenticating
        try:
            reply, rest = auth.feed(data)
        except AuthFailed as exc:
            log.warning("Direct transport: refused a connection %s: %s.", self.where, exc)
            self._count("bad_handshake")
            self._refuse()
            return b""
        if reply:
            self.transport.write(reply)
        if not auth.done:
            return b""
        self._auth = None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(True)
        self.authenticated()
        return rest

    def authenticated(self) -> None:
        """The peer passed the handshake (or needed none): frames may flow."""

    def _auth_timeout(self) -> None:
        self._stall = None
        if self._auth is not None and self.transport is not None:
            log.warning("Direct transport: refused a connection %s: no handshake within %g s.", self.where, self._limits.timeout_s)
            self._count("handshake_timeout")
            self._refuse()

    def _count(self, reason: str) -> None:
        if self._refusals is not None:
            self._refusals[reason] += 1

    def _refuse(self) -> None:
        self.foreign = True
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(False)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._auth is not None and self._auth.answered:
            self.foreign = True  # the peer hung up on our answer to its hello: it refused us
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(False)
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    @property
    def where(self) -> str:
        """This connection, for log records and errors."""
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        if self._auth is not None:
            data = self._authenticate(data)
            if not data:
                return
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        frames = []
        size = FRAME_LENGTH.size
        while end - pos >= size:
            (n,) = FRAME_LENGTH.unpack_from(buf, pos)
            if n > self._max_frame:
                self._count("frame_too_large")
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
        self._count("frame_stalled")
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
        if transport is None or transport.is_closing() or self._auth is not None:
            return  # nothing but the handshake goes to a peer that has not passed it
        self._out.append(FRAME_LENGTH.pack(len(data)))
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
