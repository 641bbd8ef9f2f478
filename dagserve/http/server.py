"""Serving over HTTP: ``dagserve.asgi_app`` (the ASGI app for Apps) and ``dagserve.serve``
(deploy graphs, then serve them with uvicorn until SIGINT/SIGTERM).

Importing this module is cheap: Starlette and uvicorn load inside the functions that use them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dagserve._errors import GraphError, OptionsError
from dagserve._options import DEFAULT_READY_TIMEOUT_S, DEFAULT_REQUEST_TIMEOUT_S
from dagserve.app import App, deploy
from dagserve.graph import Graph
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
)
from dagserve.http.hosts import host_list, served_hosts, warn_if_exposed
from dagserve.http.protocol import check_server_options, run_server
from dagserve.observe.logs import LOG_FORMATS, access_observer
from dagserve.runtime.heap import settled_heap
from dagserve.runtime.tracing import otlp_endpoint

if TYPE_CHECKING:
    from dagserve.backends import Backend
    from dagserve.observe.otel import Tracing

__all__ = ["asgi_app", "check_unique_names", "resolve_token", "serve"]

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
    log_format: str = "text",
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
    request's headers. ``log_format="json"`` writes uvicorn's lines as JSON objects and adds one
    record per request on the ``dagserve.access`` logger (docs/operations.md). Traces are exported over OTLP/HTTP when ``$DAGSERVE_OTLP_ENDPOINT`` (or
    ``$OTEL_EXPORTER_OTLP_ENDPOINT``) names an endpoint (docs/tracing.md).
    """
    items = _as_list(graph_or_graphs)
    if log_format not in LOG_FORMATS:
        raise OptionsError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}.")
    check_server_options(header_timeout_s, DEFAULT_MAX_HEADER_BYTES, shutdown_timeout_s)
    token = resolve_token(token, TOKEN_ENV)
    config = IngressConfig(
        token=token,
        admin_token=resolve_token(admin_token, ADMIN_TOKEN_ENV),
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout_s,
        max_in_flight=max_in_flight,
        debug=debug,
        allowed_hosts=served_hosts(host, token, allowed_hosts),
        local_dashboard=True,
    )
    if backend is not None and not isinstance(backend, str) and sum(isinstance(i, Graph) for i in items) > 1:
        raise OptionsError(
            "A backend instance runs one graph; pass the backend's name (e.g. backend='ray') to serve several."
        )
    owned: list[App] = []  # deployed here, so shut down here
    tracing: Tracing | None = None
    try:
        apps = [
            item if isinstance(item, App) else _deployed(item, owned, backend, ready_timeout_s, request_timeout_s, backend_options)
            for item in items
        ]
        from dagserve.http.ingress import create_app

        web = create_app(_by_name(apps), config)
        warn_if_exposed(host, config.token)
        tracing = _traced(apps)
        if log_format == "json":
            for app in apps:
                if access_observer not in app.observers:
                    app.observers.append(access_observer)  # one dagserve.access record per request
        with settled_heap():  # deployed: while serving, no GC scans of what the process holds for good
            run_server(
                web,
                host=host,
                port=port,
                header_timeout_s=header_timeout_s,
                shutdown_timeout_s=shutdown_timeout_s,
                access_log=access_log,
                log_level=log_level,
                log_format=log_format,
                on_ready=on_ready,
            )
    finally:
        if tracing is not None:
            tracing.shutdown()  # sends the spans still buffered
        for app in reversed(owned):
            try:
                app.shutdown()
            except Exception:
                logger.exception("shutting down graph %r failed", app.name)


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


def _deployed(
    graph: Graph,
    owned: list[App],
    backend: str | Backend | None,
    ready_timeout_s: float,
    request_timeout_s: float | None,
    backend_options: dict[str, Any],
) -> App:
    app = deploy(graph, backend, ready_timeout_s=ready_timeout_s, request_timeout_s=request_timeout_s, **backend_options)
    owned.append(app)
    return app


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
