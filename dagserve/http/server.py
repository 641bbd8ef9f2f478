"""Serving over HTTP: ``dagserve.asgi_app`` (the ASGI app for Apps) and ``dagserve.serve``
(deploy graphs, then serve them with uvicorn until SIGINT/SIGTERM).

Importing this module is cheap: Starlette and uvicorn load inside the functions that use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import inspect
import logging
import os
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dagserve._options import DEFAULT_READY_TIMEOUT_S, DEFAULT_REQUEST_TIMEOUT_S
from dagserve.app import App, deploy
from dagserve._errors import DagserveError, GraphError, OptionsError
from dagserve.graph import Graph
from dagserve.http.hosts import host_list, served_hosts, url_for, warn_if_exposed
from dagserve.http.config import (
    ADMIN_TOKEN_ENV,
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    TOKEN_ENV,
    IngressConfig,
    positive,
)

if TYPE_CHECKING:
    from dagserve.backends import Backend

__all__ = [
    "ADMIN_TOKEN_ENV",
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_SHUTDOWN_TIMEOUT_S",
    "TOKEN_ENV",
    "BackgroundServer",
    "IngressConfig",
    "asgi_app",
    "serve",
]

logger = logging.getLogger("dagserve.serve")

def asgi_app(
    apps: App | Iterable[App],
    *,
    token: str | None = None,
    admin_token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S,
    max_in_flight: int | None = DEFAULT_MAX_IN_FLIGHT,
    debug: bool = False,
    title: str | None = None,
    allowed_hosts: Iterable[str] | None = None,
) -> Any:
    """The ASGI (Starlette) application serving one or several deployed graphs.

    One App is served at ``POST /`` (and ``POST /<name>``); several at ``POST /<name>`` each, with
    ``GET /`` listing them. Mount it inside your own Starlette or FastAPI app::

        app = dagserve.deploy(graph)
        web = Starlette(routes=[Mount("/ml", app=dagserve.asgi_app(app))])

    ``token`` (default: the ``DAGSERVE_TOKEN`` environment variable) makes graph routes require
    ``Authorization: Bearer <token>``; ``admin_token`` (default ``DAGSERVE_ADMIN_TOKEN``) adds
    the admin routes under ``/-/admin``. Bodies larger than ``max_body_bytes`` get 413, bodies
    slower than ``body_timeout_s`` 408, and requests beyond ``max_in_flight`` running at once 503.
    ``debug`` puts tracebacks in error bodies. ``allowed_hosts`` (e.g. ``["api.example.com"]``)
    makes every route refuse, with 403, a request whose ``Host`` header is neither loopback nor
    listed; by default any Host is accepted here (your server decides). The caller keeps owning
    the Apps: shut them down when the web server stops.
    """
    config = IngressConfig(
        token=resolve_token(token, TOKEN_ENV),
        admin_token=resolve_token(admin_token, ADMIN_TOKEN_ENV),
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout_s,
        max_in_flight=max_in_flight,
        debug=debug,
        title=title,
        allowed_hosts=host_list(allowed_hosts),
    )
    from dagserve.http.ingress import create_app

    return create_app(_by_name(apps), config)


def serve(
    graph_or_graphs: Graph | App | Iterable[Graph | App],
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str | Backend | None = None,
    *,
    token: str | None = None,
    admin_token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S,
    header_timeout_s: float | None = DEFAULT_HEADER_TIMEOUT_S,
    max_in_flight: int | None = DEFAULT_MAX_IN_FLIGHT,
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    debug: bool = False,
    allowed_hosts: Iterable[str] | None = None,
    access_log: bool = False,
    log_level: str = "info",
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    on_ready: Callable[[str], None] | None = None,
    **backend_options: Any,
) -> None:
    """Deploy the graph(s) and serve them over HTTP until SIGINT or SIGTERM; blocks.

    ::

        dagserve.serve(graph, port=8000, backend="ray")

    Graphs are deployed with :func:`dagserve.deploy` (``backend`` and ``backend_options`` such as
    ``address=`` go there) and shut down when serving ends; already deployed Apps may be passed
    too and are left running. On SIGINT/SIGTERM the server stops accepting connections, lets
    requests in flight finish for up to ``shutdown_timeout_s``, then tears the graphs down and
    returns. ``on_ready(url)`` is called once the port is bound (``port=0`` picks a free one).
    Binding to anything but loopback without a ``token`` logs a warning: anyone who can reach the
    port can run the graphs. Bound to loopback without a ``token``, the server answers only
    requests whose ``Host`` is loopback (``localhost``, ``127.0.0.1``, ``[::1]``) or listed in
    ``allowed_hosts``, so that web pages cannot reach it through DNS rebinding. Other options are
    those of :func:`asgi_app`; ``header_timeout_s`` bounds how long a client may take to send a
    request's headers.
    """
    items = _as_list(graph_or_graphs)
    _check_server_options(header_timeout_s, DEFAULT_MAX_HEADER_BYTES, shutdown_timeout_s)
    token = resolve_token(token, TOKEN_ENV)
    config = IngressConfig(
        token=token,
        admin_token=resolve_token(admin_token, ADMIN_TOKEN_ENV),
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout_s,
        max_in_flight=max_in_flight,
        debug=debug,
        allowed_hosts=served_hosts(host, token, allowed_hosts),
    )
    if backend is not None and not isinstance(backend, str) and sum(isinstance(i, Graph) for i in items) > 1:
        raise OptionsError(
            "A backend instance runs one graph; pass the backend's name (e.g. backend='ray') to serve several."
        )
    owned: list[App] = []
    try:
        apps: list[App] = []
        for item in items:
            if isinstance(item, App):
                apps.append(item)
                continue
            app = deploy(
                item,
                backend,
                ready_timeout_s=ready_timeout_s,
                request_timeout_s=request_timeout_s,
                **backend_options,
            )
            owned.append(app)
            apps.append(app)
        from dagserve.http.ingress import create_app

        web = create_app(_by_name(apps), config)
        warn_if_exposed(host, config.token)
        run_server(
            web,
            host=host,
            port=port,
            header_timeout_s=header_timeout_s,
            shutdown_timeout_s=shutdown_timeout_s,
            access_log=access_log,
            log_level=log_level,
            on_ready=on_ready,
        )
    finally:
        for app in reversed(owned):
            try:
                app.shutdown()
            except Exception:
                logger.exception("shutting down graph %r failed", app.name)


# -- helpers shared with the CLI ---------------------------------------------------------------------


def resolve_token(token: str | None, env: str) -> str | None:
    """``token``, else the environment variable ``env``; empty means none."""
    if token is None:
        token = os.environ.get(env)
    return token or None


def check_unique_names(items: Iterable[Graph | App]) -> None:
    """:class:`GraphError` naming any graph name given twice: served together, each graph needs its
    own route. Checked before anything is deployed."""
    names = [i.name for i in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise GraphError(
            f"Several graphs are named {', '.join(map(repr, dupes))}; each graph needs its own name "
            "(its route is /<name>): Graph(..., name='...')."
        )


def _check_server_options(header_timeout_s: float | None, max_header_bytes: int, shutdown_timeout_s: float) -> None:
    if header_timeout_s is not None:
        positive("header_timeout_s", header_timeout_s)
    positive("max_header_bytes", max_header_bytes, integer=True)
    if (
        isinstance(shutdown_timeout_s, bool)
        or not isinstance(shutdown_timeout_s, (int, float))
        or shutdown_timeout_s < 0
    ):
        raise OptionsError(
            f"Server option shutdown_timeout_s={shutdown_timeout_s!r} is invalid; it must be >= 0 seconds."
        )


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (Graph, App)):
        return [value]
    if isinstance(value, Mapping) or isinstance(value, (str, bytes)):
        raise GraphError(f"dagserve.serve takes a Graph, an App or a list of them, got {type(value).__name__}.")
    try:
        items = list(value)
    except TypeError:
        raise GraphError(f"dagserve.serve takes a Graph, an App or a list of them, got {value!r}.") from None
    if not items:
        raise GraphError("dagserve.serve got an empty list; give it at least one Graph.")
    for item in items:
        if not isinstance(item, (Graph, App)):
            raise GraphError(f"dagserve.serve takes Graphs or Apps, got {item!r} in the list.")
    check_unique_names(items)
    return items


def _by_name(apps: App | Iterable[App]) -> dict[str, App]:
    items = [apps] if isinstance(apps, App) else list(apps)
    out: dict[str, App] = {}
    for app in items:
        if not isinstance(app, App):
            raise GraphError(f"asgi_app takes deployed Apps (from dagserve.deploy), got {app!r}.")
        if app.name in out:
            raise GraphError(f"Two Apps are named {app.name!r}; each needs its own name (its route is /<name>).")
        out[app.name] = app
    if not out:
        raise GraphError("asgi_app needs at least one App.")
    return out


# -- uvicorn --------------------------------------------------------------------------------------------


def run_server(
    web: Any,
    *,
    host: str,
    port: int,
    header_timeout_s: float | None = DEFAULT_HEADER_TIMEOUT_S,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    access_log: bool = False,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the ASGI app ``web`` with uvicorn until SIGINT/SIGTERM (main thread) or ``should_exit``."""
    server = make_server(
        web,
        host=host,
        port=port,
        header_timeout_s=header_timeout_s,
        max_header_bytes=max_header_bytes,
        shutdown_timeout_s=shutdown_timeout_s,
        access_log=access_log,
        log_level=log_level,
        on_ready=on_ready,
    )
    try:
        server.run()
    except SystemExit:
        if server.started:
            raise
        # uvicorn logs why (typically the address is in use) and exits; a library should raise.
        raise DagserveError(
            f"The HTTP server could not start on {host}:{port} (is the port in use? the log above says why)."
        ) from None


def make_server(
    web: Any,
    *,
    host: str,
    port: int,
    header_timeout_s: float | None = DEFAULT_HEADER_TIMEOUT_S,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    access_log: bool = False,
    log_level: str | int | None = "info",
    on_ready: Callable[[str], None] | None = None,
) -> Any:
    """A configured (not yet running) uvicorn server for ``web``.

    Raises :class:`DagserveError` when the installed uvicorn lacks what dagserve's server
    extends (see :func:`check_uvicorn`).
    """
    import uvicorn

    check_uvicorn()
    _check_server_options(header_timeout_s, max_header_bytes, shutdown_timeout_s)
    config = uvicorn.Config(
        web,
        host=host,
        port=port,
        http=protocol_class(header_timeout_s, max_header_bytes),
        loop="auto",  # uvloop when installed
        lifespan="off",  # the ingress needs no startup/shutdown of its own: serve() owns the Apps
        access_log=access_log,
        log_config=_log_config(),
        log_level=log_level,
        timeout_graceful_shutdown=shutdown_timeout_s,  # type: ignore[arg-type]
        server_header=False,
    )
    return _server_class()(config, host=host, on_ready=on_ready)


def _log_config() -> dict[str, Any]:
    """uvicorn's default logging set-up, with the request id at the end of each access line."""
    from uvicorn.config import LOGGING_CONFIG

    from dagserve.runtime.request_id import RequestIdFilter

    config = copy.deepcopy(LOGGING_CONFIG)
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
        def __init__(self, config: Any, *, host: str, on_ready: Callable[[str], None] | None) -> None:
            super().__init__(config)
            self._host = host
            self._on_ready = on_ready
            self.url: str | None = None

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if not self.started:
                return
            port = self.servers[0].sockets[0].getsockname()[1]
            self.url = url_for(self._host, port)
            if self._on_ready is not None:
                self._on_ready(self.url)

        async def shutdown(self, sockets: Any = None) -> None:
            ingress = getattr(getattr(self.config.app, "state", None), "dagserve", None)
            if ingress is not None:
                ingress.draining = True  # /-/ready says 503 while requests in flight finish
            await super().shutdown(sockets=sockets)

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

    from dagserve.http.errors import error_body
    from dagserve.http.ingress import SCOPE_HANGUP, SCOPE_REJECT, HangUpWatch
    from dagserve.http.jsonio import dump_json
    from dagserve.runtime.request_id import new_request_id

    reasons = {408: "Request Timeout", 431: "Request Header Fields Too Large"}

    class HeadBoundedProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _last_cycle: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._watch = HangUpWatch()  # tells the ingress when the client hangs up
            self._arm()

        def data_received(self, data: bytes) -> None:
            head_started = self._awaiting_head()  # so this read and those counted since hold the head
            super().data_received(data)
            if self._awaiting_head():
                # The head's clock starts with its first byte (this read): armed only now, so that a
                # head arriving whole, as most do, never arms and cancels a timer.
                if self._head_timer is None:
                    self._arm()
                self._head_bytes += len(data)
                if self._head_bytes > max_header_bytes:
                    self._reject(
                        431, "RequestHeadTooLarge", f"The request head is larger than {max_header_bytes} bytes."
                    )
                return
            self._disarm()
            received = self._head_bytes + len(data)
            self._head_bytes = 0
            cycle = self.cycle
            if cycle is not self._last_cycle:
                self._last_cycle = cycle
                scope = cycle.scope
                scope[SCOPE_HANGUP] = self._watch
                if head_started and received <= max_header_bytes:
                    return  # the head fit in fewer bytes than the limit
                # A pipelined head (it began while the previous request ran) or a large one: measure it.
                size = (
                    len(scope["raw_path"])
                    + len(scope["query_string"])
                    + sum(len(k) + len(v) + 4 for k, v in scope["headers"])
                )
                if size > max_header_bytes:
                    # The whole head came in one read; its task starts on the next loop turn, and the
                    # ingress answers 431 instead of running it.
                    scope[SCOPE_REJECT] = (
                        431,
                        "RequestHeadTooLarge",
                        f"The request head is larger than {max_header_bytes} bytes.",
                    )

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)
            self._watch.hung_up()  # cancels the graph run on this connection, if any

        def _awaiting_head(self) -> bool:
            cycle = self.cycle
            return cycle is None or cycle.response_complete

        def _arm(self) -> None:
            if header_timeout_s is not None:
                self._head_timer = self.loop.call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expired(self) -> None:
            self._head_timer = None
            if self._awaiting_head():
                self._reject(
                    408, "RequestHeaderTimeout", f"The request headers did not arrive within {header_timeout_s:g} s."
                )

        def _reject(self, status: int, error_type: str, message: str) -> None:
            self._disarm()
            transport = self.transport
            if transport.is_closing():
                return
            rid = new_request_id()
            body = dump_json(error_body(status, error_type, message, request_id=rid))
            head = (
                f"HTTP/1.1 {status} {reasons[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nx-request-id: {rid}\r\nconnection: close\r\n\r\n"
            )
            transport.write(head.encode("ascii") + body)
            transport.close()

    return HeadBoundedProtocol


class BackgroundServer:
    """Serves an ASGI app with uvicorn on a thread (tests, notebooks, benchmarks)::

        with BackgroundServer(dagserve.asgi_app(app)) as url:
            httpx.post(url, json={...})

    ``port=0`` (the default) picks a free port; ``url`` is known once started.
    """

    def __init__(self, web: Any, *, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self._ready = threading.Event()
        options.setdefault("log_level", "warning")
        self.server = make_server(web, host=host, port=port, on_ready=lambda url: self._ready.set(), **options)
        self._thread = threading.Thread(target=self._run, name="dagserve-http", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        if self.server.url is None:
            raise DagserveError("The server has not started yet.")
        return str(self.server.url)

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # SystemExit from uvicorn when the port is taken
            self._error = exc
        finally:
            self._ready.set()

    def start(self, timeout_s: float = 30.0) -> str:
        self._thread.start()
        if not self._ready.wait(timeout_s) or self.server.url is None:
            self.stop()
            raise DagserveError(f"The HTTP server did not start within {timeout_s:g} s: {self._error!r}.")
        return self.url

    def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful stop: in-flight requests finish (within the shutdown timeout)."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
