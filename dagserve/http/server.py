"""Serving over HTTP: ``dagserve.asgi_app`` (the ASGI app for Apps) and ``dagserve.serve``
(deploy graphs, then serve them with uvicorn until SIGINT/SIGTERM).

Importing this module is cheap: Starlette and uvicorn load inside the functions that use them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dagserve._errors import GraphError
from dagserve._options import DEFAULT_READY_TIMEOUT_S, DEFAULT_REQUEST_TIMEOUT_S
from dagserve.app import App, AppGroup, deploy
from dagserve.graph import Graph
from dagserve.http.settings import (
    ADMIN_TOKEN_ENV,
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    TOKEN_ENV,
    IngressConfig,
    ServerOptions,
    resolve_token,
)
from dagserve.http.connections import run_server
from dagserve.http.hosts import host_list, warn_if_exposed
from dagserve.observe.logs import access_observer
from dagserve.runtime.heap import settled_heap
from dagserve.runtime.tracing import otlp_endpoint

if TYPE_CHECKING:
    from dagserve.backends import Backend
    from dagserve.observe.otel import Tracing

__all__ = ["asgi_app", "check_unique_names", "serve"]

logger = logging.getLogger("dagserve.serve")

def asgi_app(
    apps: App | AppGroup | Iterable[App | AppGroup],
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
    return _ingress(_by_name(apps), config)


def serve(
    graph_or_graphs: Graph | App | AppGroup | Iterable[Graph | App | AppGroup],
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
    log_format: str = "text",
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    on_ready: Callable[[str], None] | None = None,
    grpc_port: int | None = None,
    options: ServerOptions | None = None,
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
    request's headers. ``log_format="json"`` writes uvicorn's lines as JSON objects and adds one
    record per request on the ``dagserve.access`` logger (docs/operations.md). Traces are exported over OTLP/HTTP when ``$DAGSERVE_OTLP_ENDPOINT`` (or
    ``$OTEL_EXPORTER_OTLP_ENDPOINT``) names an endpoint (docs/tracing.md). ``grpc_port`` also
    serves the Open Inference Protocol over gRPC on ``host`` at that port (``0`` picks one;
    docs/protocols.md), with the same token, limits and deadlines.

    ``options`` (a :class:`~dagserve.http.settings.ServerOptions`, as ``dagserve run`` builds
    from its flags) replaces every server option above when given.
    """
    items = _as_list(graph_or_graphs)
    if options is None:
        options = ServerOptions.build(
            host=host,
            port=port,
            token=token,
            admin_token=admin_token,
            max_body_bytes=max_body_bytes,
            body_timeout_s=body_timeout_s,
            max_in_flight=max_in_flight,
            debug=debug,
            allowed_hosts=allowed_hosts,
            header_timeout_s=header_timeout_s,
            shutdown_timeout_s=shutdown_timeout_s,
            access_log=access_log,
            log_level=log_level,
            log_format=log_format,
            grpc_port=grpc_port,
        )
    owned: list[App] = []  # deployed here, so shut down here
    tracing: Tracing | None = None
    try:
        graphs = [item for item in items if isinstance(item, Graph)]
        if graphs:  # deployed together, like dagserve.deploy([...]): a node they share runs once
            timeouts = {"ready_timeout_s": ready_timeout_s, "request_timeout_s": request_timeout_s}
            owned.append(deploy(graphs[0] if len(graphs) == 1 else graphs, backend, **timeouts, **backend_options))
        served = _by_name([item for item in items if not isinstance(item, Graph)] + owned)
        apps = list(served.values())
        web = _ingress(served, options.ingress)
        warn_if_exposed(options.host, options.ingress.token)
        tracing = _traced(apps)
        if options.log_format == "json":
            for app in apps:
                if access_observer not in app.observers:
                    app.observers.append(access_observer)  # one dagserve.access record per request
        companions = [] if options.grpc_port is None else [grpc_companion(options.host, options.grpc_port)]
        with settled_heap():  # deployed: while serving, no GC scans of what the process holds for good
            run_server(web, options, on_ready=on_ready, companions=companions)
    finally:
        if tracing is not None:
            tracing.shutdown()  # sends the spans still buffered
        for app in reversed(owned):
            try:
                app.shutdown()
            except Exception:
                logger.exception("shutting down graph %r failed", app.name)


def grpc_companion(host: str, port: int) -> Any:
    """The gRPC server (http/grpc_server.py) to run beside HTTP; grpcio loads only now."""
    from dagserve.http.grpc_server import GrpcServer

    return GrpcServer(host, port)


def _ingress(apps: dict[str, App], config: IngressConfig) -> Any:
    """The ingress for ``apps``: their graph routes, and the OpenAI routes of the graphs marked
    with ``dagserve.openai`` (http/openai_routes.py)."""
    from dagserve.http.ingress import create_app
    from dagserve.http.openai_routes import openai_routes

    return create_app(apps, config, route_sets=(openai_routes,))


def _traced(apps: list[App]) -> Tracing | None:
    """Export the Apps' traces when an OTLP endpoint is configured (runtime/tracing.py); else nothing."""
    endpoint = otlp_endpoint()
    if endpoint is None:
        return None
    from dagserve.observe.otel import Tracing  # imports the OpenTelemetry SDK: only now

    tracing = Tracing(endpoint=endpoint)
    for app in apps:
        tracing.install(app)
    logger.info("exporting traces over OTLP/HTTP to %s", endpoint)
    return tracing


# -- helpers shared with the CLI ---------------------------------------------------------------------


def check_unique_names(items: Iterable[Graph | App | AppGroup]) -> None:
    """:class:`GraphError` naming any graph name given twice: served together, each graph needs its
    own route. Checked before anything is deployed."""
    names = [i.name for i in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise GraphError(
            f"Several graphs are named {', '.join(map(repr, dupes))}; each graph needs its own name "
            "(its route is /<name>): Graph(..., name='...')."
        )


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (Graph, App, AppGroup)):
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
        if not isinstance(item, (Graph, App, AppGroup)):
            raise GraphError(f"dagserve.serve takes Graphs or Apps, got {item!r} in the list.")
    check_unique_names(items)
    return items


def _by_name(apps: App | AppGroup | Iterable[App | AppGroup]) -> dict[str, App]:
    """Each graph served, by name: an AppGroup (graphs deployed together) stands for each of them."""
    items = [apps] if isinstance(apps, (App, AppGroup)) else list(apps)
    out: dict[str, App] = {}
    for given in items:
        if not isinstance(given, (App, AppGroup)):
            raise GraphError(f"asgi_app takes deployed Apps (from dagserve.deploy), got {given!r}.")
        for app in given.graphs.values() if isinstance(given, AppGroup) else [given]:
            if app.name in out:
                raise GraphError(f"Two Apps are named {app.name!r}; each needs its own name (its route is /<name>).")
            out[app.name] = app
    if not out:
        raise GraphError("asgi_app needs at least one App.")
    return out
