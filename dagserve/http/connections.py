"""dagserve's uvicorn server: the HTTP protocol with a request-head deadline and size limit, hang-up
notices for the ingress, and a check at start that the installed uvicorn still has what it extends.

uvicorn is pinned in pyproject.toml to the range this was written against (``UVICORN_SUPPORTED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import inspect
import logging
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from dagserve._errors import DagserveError
from dagserve.http.settings import ServerOptions
from dagserve.http.errors import error_body
from dagserve.http.hosts import url_for
from dagserve.http.jsonio import dump_json
from dagserve.runtime.request_id import new_request_id

if TYPE_CHECKING:
    from starlette.types import Receive

logger = logging.getLogger("dagserve.serve")

def run_server(
    web: Any,
    options: ServerOptions,
    *,
    on_ready: Callable[[str], None] | None = None,
    companions: Sequence[Companion] = (),
) -> None:
    """Serve the ASGI app ``web`` with uvicorn as ``options`` say until SIGINT/SIGTERM (main
    thread) or ``should_exit``; ``companions`` (e.g. the gRPC server) start before it and stop
    with it (see :class:`Companion`)."""
    server = make_server(web, options, on_ready=on_ready, companions=companions)
    try:
        server.run()
    except SystemExit:
        if server.started:
            raise
        # uvicorn logs why (typically the address is in use) and exits; a library should raise.
        raise DagserveError(
            f"The HTTP server could not start on {options.host}:{options.port} (is the port in use? the log "
            "above says why)."
        ) from None


def make_server(
    web: Any,
    options: ServerOptions,
    *,
    on_ready: Callable[[str], None] | None = None,
    companions: Sequence[Companion] = (),
) -> Any:
    """A configured (not yet running) uvicorn server for ``web``.

    Raises :class:`DagserveError` when the installed uvicorn lacks what dagserve's server
    extends (see :func:`check_uvicorn`).
    """
    import uvicorn

    check_uvicorn()
    config = uvicorn.Config(
        web,
        host=options.host,
        port=options.port,
        http=protocol_class(options.header_timeout_s, options.max_header_bytes),
        loop="auto",  # uvloop when installed
        lifespan="off",  # the ingress needs no startup/shutdown of its own: serve() owns the Apps
        access_log=options.access_log,
        log_config=_log_config(options.log_format),
        log_level=options.log_level,
        timeout_graceful_shutdown=options.shutdown_timeout_s,  # type: ignore[arg-type]
        server_header=False,
    )
    return _server_class()(config, host=options.host, on_ready=on_ready, companions=tuple(companions))


def _log_config(log_format: str = "text") -> dict[str, Any]:
    """uvicorn's default logging set-up, with the request id at the end of each access line; with
    ``json``, its lines as JSON objects with the request and trace ids (observe/logs.py)."""
    from uvicorn.config import LOGGING_CONFIG

    from dagserve.observe.logs import JsonFormatter, TraceIdFilter
    from dagserve.runtime.request_id import RequestIdFilter

    config = copy.deepcopy(LOGGING_CONFIG)
    if log_format == "json":
        config.setdefault("filters", {})["dagserve_request_id"] = {"()": TraceIdFilter}
        config["formatters"] = {"json": {"()": JsonFormatter}}
        for handler in config["handlers"].values():
            handler["formatter"] = "json"
            handler.setdefault("filters", []).append("dagserve_request_id")
        return config
    config.setdefault("filters", {})["dagserve_request_id"] = {"()": RequestIdFilter}
    config["formatters"]["access"]["fmt"] += " [%(request_id)s]"
    config["handlers"]["access"].setdefault("filters", []).append("dagserve_request_id")
    return config


#: The uvicorn releases whose internals dagserve's server is written against (pyproject.toml pins them).
UVICORN_SUPPORTED = ">=0.30,<0.55"


@functools.cache
def check_uvicorn() -> None:
    """Raise :class:`DagserveError` unless the installed uvicorn has what dagserve's server uses.

    The server subclasses uvicorn's HTTP protocol (for the request-head deadline and size limit,
    which uvicorn lacks) and its ``Server`` (readiness, draining, signals), and reads attributes
    uvicorn does not document. A uvicorn without them must fail at start, not serve without
    those limits.
    """
    import uvicorn
    import uvicorn.config
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    cycle = getattr(sys.modules[AutoHTTPProtocol.__module__], "RequestResponseCycle", None)
    problems = uvicorn_problems(uvicorn.Server, uvicorn.Config, AutoHTTPProtocol, cycle, uvicorn.config.LOGGING_CONFIG)
    if problems:
        raise DagserveError(
            f"dagserve's HTTP server cannot run on uvicorn {getattr(uvicorn, '__version__', '?')}: "
            f"{'; '.join(problems)}. It extends uvicorn's protocol and server (request-head deadline and size "
            f"limit, draining); install a uvicorn it supports: pip install 'uvicorn[standard]{UVICORN_SUPPORTED}'."
        )


def uvicorn_problems(server: type, config: type, protocol: type, cycle: type | None, logging_config: Any) -> list[str]:
    """What dagserve's server needs of these uvicorn classes and does not find (empty: all there).

    Methods are looked up; attributes set on instances are looked for among the names the
    classes' own code uses (a renamed attribute disappears from there).
    """
    problems: list[str] = []

    def need(cls: type | None, label: str, methods: tuple[str, ...], attributes: tuple[str, ...]) -> None:
        if cls is None:
            problems.append(f"{label} is missing")
            return
        problems.extend(f"{label}.{m}() is missing" for m in methods if not callable(getattr(cls, m, None)))
        used = _names_used(cls)
        problems.extend(f"{label} no longer has .{a}" for a in attributes if a not in used)

    need(server, "uvicorn.Server", _SERVER_METHODS, ("started", "servers", "should_exit", "config"))
    need(protocol, f"{protocol.__name__} (uvicorn's HTTP protocol)", _PROTOCOL_METHODS, ("cycle", "transport", "loop"))
    need(cycle, "its RequestResponseCycle", (), ("scope", "response_complete"))
    if "sockets" not in _parameters(getattr(server, "startup", None)):
        problems.append("uvicorn.Server.startup() takes no sockets=")
    taken = _parameters(config)
    problems.extend(f"uvicorn.Config takes no {k}=" for k in _CONFIG_OPTIONS if k not in taken)
    try:
        logging_config["formatters"]["access"]["fmt"] + ""
        logging_config["handlers"]["access"]["class"] + ""
    except (KeyError, TypeError):
        problems.append("uvicorn.config.LOGGING_CONFIG has no 'access' formatter and handler")
    return problems


_SERVER_METHODS = ("run", "startup", "shutdown", "capture_signals", "handle_exit")
_PROTOCOL_METHODS = ("connection_made", "data_received", "connection_lost")
_CONFIG_OPTIONS = (
    "http",
    "loop",
    "lifespan",
    "access_log",
    "log_config",
    "log_level",
    "timeout_graceful_shutdown",
    "server_header",
)


def _parameters(fn: Any) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _names_used(cls: type) -> set[str]:
    """Every attribute and global name the code of ``cls`` and its bases (not ``object``) uses."""
    names: set[str] = set()
    codes = [
        fn.__code__
        for klass in cls.__mro__[:-1]
        for value in vars(klass).values()
        for fn in (getattr(value, "__func__", value), getattr(value, "fget", None))
        if hasattr(fn, "__code__")
    ]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return names


@functools.cache
def _server_class() -> type:
    """uvicorn's Server, told who to call when ready and how to drain (built on first use)."""
    import uvicorn

    class Server(uvicorn.Server):
        def __init__(
            self, config: Any, *, host: str, on_ready: Callable[[str], None] | None, companions: tuple[Companion, ...] = ()
        ) -> None:
            super().__init__(config)
            self._host = host
            self._on_ready = on_ready
            self.companions = companions
            self.url: str | None = None

        async def startup(self, sockets: Any = None) -> None:
            ingress = getattr(getattr(self.config.app, "state", None), "dagserve", None)
            started: list[Companion] = []
            try:
                for companion in self.companions:  # bound first: a taken port stops everything before HTTP
                    await companion.start(ingress)
                    started.append(companion)
            except BaseException:
                for companion in reversed(started):
                    await companion.stop(0)
                raise
            await super().startup(sockets=sockets)
            if not self.started:
                for companion in reversed(started):
                    await companion.stop(0)
                return
            port = self.servers[0].sockets[0].getsockname()[1]
            self.url = url_for(self._host, port)
            if ingress is not None:
                ingress.start()  # the job workers, on this loop (http/job_routes.py)
                await ingress.prepare()  # connections open before ready is reported
            if self._on_ready is not None:
                self._on_ready(self.url)

        async def shutdown(self, sockets: Any = None) -> None:
            ingress = getattr(getattr(self.config.app, "state", None), "dagserve", None)
            if ingress is not None:
                ingress.draining = True  # /-/ready says 503 while requests in flight finish
            # Companions drain beside HTTP (their own tasks); uvicorn's shutdown stays in this one.
            grace = self.config.timeout_graceful_shutdown or 0
            stops = [asyncio.ensure_future(c.stop(grace)) for c in self.companions]
            try:
                await super().shutdown(sockets=sockets)
            finally:
                await asyncio.gather(*stops)
            if ingress is not None:
                await ingress.stop()  # the job workers: jobs running here go back to the queue

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal after its shutdown; we do not, so that serve() can still
            # tear the graphs down and return normally.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


class Companion(Protocol):
    """A server that runs beside the HTTP one, on its loop (the gRPC server): ``start(ingress)``
    before HTTP binds, ``stop(grace_s)`` while HTTP drains."""

    async def start(self, ingress: Any) -> None: ...

    async def stop(self, grace_s: float) -> None: ...


#: Scope key dagserve's server sets to the connection's :class:`HangUpWatch`.
SCOPE_HANGUP = "dagserve.hangup"
#: Scope key the server sets to ``(status, type, message)`` when a request must be refused unread.
SCOPE_REJECT = "dagserve.reject"


class HangUpWatch:
    """One connection as dagserve's server sees it (in the scope under :data:`SCOPE_HANGUP`):
    ``gone`` once the connection is lost, when each callback in ``hooks`` is called (the
    ingress puts there the ``cancel`` of each request it runs on the connection)."""

    __slots__ = ("gone", "hooks")

    def __init__(self) -> None:
        self.gone = False
        self.hooks: set[Callable[[], object]] = set()

    def hung_up(self) -> None:
        self.gone = True
        hooks, self.hooks = self.hooks, set()
        for hook in hooks:
            hook()


async def cancel_on_hang_up(receive: Receive, task: asyncio.Task[Any]) -> bool:
    """Wait for the client to disconnect, then cancel ``task`` and return ``True``.

    Once the body is read, an ASGI server's ``receive()`` returns only when the connection
    closes (``http.disconnect``); anything else ends the watch without cancelling.
    """
    try:
        message = await receive()
    except Exception:  # a server whose receive() fails here cannot tell us: stop watching
        return False
    if message["type"] != "http.disconnect":
        return False
    task.cancel()
    return True


class _HeadBounded:
    """Mixed into uvicorn's HTTP protocol by :func:`protocol_class` (see there)."""

    header_timeout_s: float | None = None
    max_header_bytes: int = 0
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _last_cycle: Any = None
    # Set by uvicorn's protocol: its request cycle, transport and loop.
    cycle: Any
    transport: Any
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._watch = HangUpWatch()  # tells the ingress when the client hangs up
        self._arm()

    def data_received(self, data: bytes) -> None:
        head_started = self._awaiting_head()  # so this read and those counted since hold the head
        super().data_received(data)  # type: ignore[misc]
        if self._awaiting_head():
            # The head's clock starts with its first byte (this read): armed only now, so that a
            # head arriving whole, as most do, never arms and cancels a timer.
            if self._head_timer is None:
                self._arm()
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._reject(431, "RequestHeadTooLarge", f"The request head is larger than {self.max_header_bytes} bytes.")
            return
        self._disarm()
        received = self._head_bytes + len(data)
        self._head_bytes = 0
        cycle = self.cycle
        if cycle is not self._last_cycle:
            self._last_cycle = cycle
            self._mark_scope(cycle.scope, measured=head_started and received <= self.max_header_bytes)

    def _mark_scope(self, scope: dict[str, Any], *, measured: bool) -> None:
        scope[SCOPE_HANGUP] = self._watch
        if measured:
            return  # the head fit in fewer bytes than the limit
        # A pipelined head (it began while the previous request ran) or a large one: measure it.
        size = len(scope["raw_path"]) + len(scope["query_string"]) + sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if size > self.max_header_bytes:
            # The whole head came in one read; its task starts on the next loop turn, and the
            # ingress answers 431 instead of running it.
            scope[SCOPE_REJECT] = (431, "RequestHeadTooLarge", f"The request head is larger than {self.max_header_bytes} bytes.")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]
        self._watch.hung_up()  # cancels the graph run on this connection, if any

    def _awaiting_head(self) -> bool:
        cycle = self.cycle
        return cycle is None or bool(cycle.response_complete)

    def _arm(self) -> None:
        if self.header_timeout_s is not None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if self._awaiting_head():
            timeout = self.header_timeout_s or 0.0
            self._reject(408, "RequestHeaderTimeout", f"The request headers did not arrive within {timeout:g} s.")

    def _reject(self, status: int, error_type: str, message: str) -> None:
        self._disarm()
        transport = self.transport
        if transport.is_closing():
            return
        rid = new_request_id()
        body = dump_json(error_body(status, error_type, message, request_id=rid))
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nx-request-id: {rid}\r\nconnection: close\r\n\r\n"
        )
        transport.write(head.encode("ascii") + body)
        transport.close()


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}


@functools.cache
def protocol_class(header_timeout_s: float | None, max_header_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, else h11) with a deadline and a size bound on request heads.

    uvicorn itself has neither: a client that sends a request's headers one byte at a time holds
    its connection for ever. Here the head must arrive within ``header_timeout_s`` of the
    connection (or, on a kept-alive connection, of its first byte) and stay under
    ``max_header_bytes``; otherwise the client gets a JSON 408 or 431 and the connection closes.
    It also tells the ingress when a connection is lost (``HangUpWatch`` in each request's scope),
    so that the graph run of a client that hung up is cancelled at once.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    limits = {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes}
    return type("HeadBoundedProtocol", (_HeadBounded, AutoHTTPProtocol), limits)
