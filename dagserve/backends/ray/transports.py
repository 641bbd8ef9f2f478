"""How a call reaches a node's replicas on Ray: one interface, two transports, one chooser.

A :class:`Transport` sends a call (:meth:`~Transport.call`) or opens a generator node's stream
(:meth:`~Transport.stream`) with its :class:`~dagserve.backends.ray.header.CallHeader`. There are
two:

* dagserve's direct transport: a node's :class:`~dagserve.backends.ray.direct.pool.DirectPool`
  (Unix sockets on this Ray node, TCP with the token handshake across nodes) is one;
* :class:`ServeTransport`, Serve's ``DeploymentHandle`` (its router and gRPC).

:func:`choose_transport` is the one place that picks between them, for every caller: the
ingress's calls and streams (``runner.py``, ``streams.py``), and in a replica the streams it
reads and the calls its node code makes through handles (``handles.py``). Callers never test
which one they hold; they read :attr:`Transport.takes_responses` where it matters (whether another
call's un-awaited response may be an argument, resolved where the call runs: Serve's only).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dagserve.backends.ray.direct_routing import DirectRouting
    from dagserve.backends.ray.header import CallHeader

__all__ = ["STREAM_METHOD", "ServeHandles", "ServeTransport", "Transport", "choose_transport"]

#: The replica method streaming calls go to (``NodeReplica.dagserve_stream``).
STREAM_METHOD = "dagserve_stream"


class Transport(Protocol):
    """Sends calls to one node's replicas."""

    #: ``"direct"`` or ``"serve"`` (what ``status()`` and ``RayBackend.transport`` report).
    kind: str
    #: May a call's arguments hold other calls' un-awaited responses (resolved where it runs)?
    takes_responses: bool

    def call(self, header: CallHeader, args: tuple[Any, ...], kwargs: dict[str, Any], model: str | None = None) -> Any:
        """Send one call: an awaitable of its result, with ``cancel()``; ``model``: a multiplexed
        node's model id, so that the call goes to a replica holding that model."""

    def stream(self, header: CallHeader, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Open a generator node's stream: an async iterator of its items, with ``cancel()``."""


class ServeTransport:
    """Serve's ``DeploymentHandle`` as a :class:`Transport`."""

    __slots__ = ("_stream", "handle")

    kind = "serve"
    takes_responses = True

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._stream: Any = None  # the streaming handle, made on first use

    def call(self, header: CallHeader, args: tuple[Any, ...], kwargs: dict[str, Any], model: str | None = None) -> Any:
        handle = self.handle if model is None else self.handle.options(multiplexed_model_id=model)
        return handle.remote(header, *args, **kwargs)

    def stream(self, header: CallHeader, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._stream is None:
            self._stream = self.handle.options(method_name=STREAM_METHOD, stream=True)
        return self._stream.remote(header, *args, **kwargs)


class ServeHandles:
    """This process's Serve handles of one application's deployments, as transports.

    Each handle is made on first use: a handle of its own rather than Serve's cached one (its
    router may live on the App's loop, and it is shut down there; Serve's own teardown would try
    synchronously), routing to replicas on this process's Ray node first. With ``by_reference``
    a response handed to the next call travels as a Ray object reference, fetched by the next
    replica (by default Serve's gRPC transport resolves it here and sends the value on, which is
    faster on one machine).
    """

    def __init__(self, *, by_reference: bool = False) -> None:
        self.by_reference = by_reference
        self._made: dict[str, ServeTransport] = {}

    def transport(self, app: str, name: str) -> ServeTransport:
        made = self._made.get(name)
        if made is None:
            from ray.serve.handle import DeploymentHandle

            handle = DeploymentHandle(name, app)
            handle._init(_prefer_local_routing=True)  # busy local replicas: Serve takes the others
            if self.by_reference:
                handle = handle.options(_by_reference=True)
            made = self._made[name] = ServeTransport(handle)
        return made

    def made(self, name: str) -> Any:
        """The handle of ``name`` if one was made (requests already used it), else ``None``."""
        made = self._made.get(name)
        return made.handle if made is not None else None

    def rebind(self) -> None:
        """The App's event loop changed: unless Serve runs routers on a loop of their own, a
        router lives on the loop that first used its handle, so new handles are made."""
        if self._made and not _router_in_own_loop():
            self._made = {}

    def close(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Shut every handle's router down (on ``loop``, where they run) and forget them."""
        handles = [t.handle for t in self._made.values()]
        self._made = {}
        if not handles:
            return
        if _router_in_own_loop():
            for h in handles:
                with contextlib.suppress(Exception):  # a router already gone needs no shutdown
                    h.shutdown()
            return
        if loop is None or loop.is_closed() or not loop.is_running():
            return

        async def close() -> None:
            for h in handles:
                with contextlib.suppress(Exception):  # a router already gone needs no shutdown
                    await h.shutdown_async()

        if asyncio._get_running_loop() is loop:
            loop.create_task(close())  # cannot block our own loop; it finishes on its own
            return
        with contextlib.suppress(Exception):  # best effort: the routers die with the process anyway
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=5)


def _router_in_own_loop() -> bool:
    """Does Serve run handle routers on a loop of their own (usable from any event loop)?"""
    from ray.serve._private import constants

    return bool(constants.RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP)


def choose_transport(
    routing: DirectRouting | None,
    node: str,
    app: str,
    limits: tuple[int, int | None] | None,
    serve: Callable[[], ServeTransport],
) -> Transport:
    """The transport a call to ``node`` (of Serve application ``app``) takes now.

    The direct transport when ``routing`` (the caller's direct pools) has a usable pool for the
    node and ``limits`` says its calls may go direct (its pool's ``(max_ongoing, max_queued)``;
    ``None`` for an autoscaled node, whose requests Serve's autoscaler must count); else Serve's
    handle, which ``serve()`` gives. A pool opens on the node's first call and connects in the
    background: until it has, and whenever no replica accepts calls, Serve takes them.
    """
    if routing is not None and limits is not None:
        pool = routing.pool_for(node, app, limits)
        if pool is not None:
            return pool
    return serve()
