"""Admin HTTP routes: status, scale and option updates of running graphs, behind a bearer token.

They exist only when a token is configured (``DAGSERVE_ADMIN_TOKEN`` or the ``token`` argument);
without one :func:`admin_routes` returns no routes, so the paths answer 404 like any unknown URL.
Every request must carry ``Authorization: Bearer <token>``: a missing or malformed header gets
401, a wrong token 403 (compared in constant time). Mounted at :data:`ADMIN_PREFIX`:

==========================================================  ============================================
``GET  /-/admin/status``                                    every graph: ``{"graphs": {name: status}}``
``GET  /-/admin/graphs/{graph}``                            one graph's status
``POST /-/admin/graphs/{graph}/nodes/{node}/scale``         body ``{"num_replicas": 3}`` or
                                                            ``{"autoscaling": {"min_replicas": 1, ...}}``
``POST /-/admin/graphs/{graph}/nodes/{node}/update``        body of options, e.g. ``{"max_batch_size": 16,
                                                            "batch_wait_timeout_s": 0.005}``
==========================================================  ============================================

A status is ``App.status().to_dict()`` plus, per node, ``requests`` and ``errors`` (since start,
from the metrics) and ``p50_s`` / ``p99_s`` / ``rate_per_s`` (recent window, from
:mod:`dagserve.observe.stats`). Scale and update accept ``?wait_s=`` (seconds to wait for the new
replicas) and answer with the node's new status. ``App.scale`` and ``App.update`` block until the
change is done, so they run in a worker thread while the event loop keeps serving requests.

A ``dagserve run`` on a loopback address without a token creates one and keeps it, for
``dagserve status/scale/update`` on this machine, in a file only this user can read
(:func:`write_token_file`; one file per host and port, removed when the server stops).
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagserve._errors import DagserveError, GraphError
from dagserve.http.settings import ADMIN_TOKEN_ENV
from dagserve.http.errors import HTTPError, error_body
from dagserve.http.jsonio import JSONBodyError, dump_json, parse_json
from dagserve.runtime.request_id import current_request_id

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute

    from dagserve.app import App
    from dagserve.observe.metrics import Metrics

__all__ = [
    "ADMIN_PREFIX",
    "AppsSource",
    "TokenFileError",
    "admin_mount",
    "admin_routes",
    "admin_token",
    "graph_status",
    "private_token_dir",
    "remove_token_file",
    "token_dir",
    "token_for_url",
    "write_token_file",
]

log = logging.getLogger("dagserve.admin")

#: Where the admin routes live; ``-`` cannot start a graph name, so they never clash with graphs.
ADMIN_PREFIX = "/-/admin"

#: The Apps the routes act on: a name -> App mapping, Apps, or a callable returning either
#: (read on every request, so Apps deployed after the routes were made are found).
AppsSource = Mapping[str, "App"] | Iterable["App"] | Callable[[], "Mapping[str, App] | Iterable[App]"]

# Options an HTTP update may change. Replicas go through scale; implementations and resources
# need code or a redeploy.
#: Admin bodies carry a few options; anything larger is refused unread (413).
_MAX_ADMIN_BODY_BYTES = 64 * 1024
_UPDATE_OPTIONS = frozenset(
    {"max_batch_size", "batch_wait_timeout_s", "max_ongoing_requests", "max_queued_requests", "timeout_s", "retries"}
)


def admin_token(token: str | None = None) -> str | None:
    """The configured token: ``token`` if given, else ``$DAGSERVE_ADMIN_TOKEN``; empty means none."""
    value = token if token is not None else os.environ.get(ADMIN_TOKEN_ENV)
    value = value.strip() if value else None
    return value or None


# -- the token file of a loopback `dagserve run` ----------------------------------------------------


class TokenFileError(DagserveError):
    """The admin token file cannot be written or trusted (its directory is not private)."""


def token_dir() -> Path:
    """Where loopback servers keep the admin tokens they create: ``$XDG_RUNTIME_DIR/dagserve``
    (a per-user directory emptied at logout), else ``$XDG_CONFIG_HOME/dagserve`` or
    ``~/.config/dagserve``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "dagserve"
    config = os.environ.get("XDG_CONFIG_HOME")
    base = Path(config) if config and os.path.isabs(config) else Path.home() / ".config"
    return base / "dagserve"


def token_path(host: str, port: int) -> Path:
    """The token file of the server on ``host:port`` (``localhost`` is 127.0.0.1, where it binds)."""
    name = host.strip("[]").lower()
    name = "127.0.0.1" if name == "localhost" else name
    return token_dir() / f"admin-token-{name.replace(':', '_')}-{port}"  # no colons in file names (IPv6)


def _check_private(path: Path, *, directory: bool) -> None:
    """Refuse (never repair) a path another user owns or may read: a token there is not secret."""
    st = os.lstat(path)
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not kind_ok or st.st_uid != os.getuid() or st.st_mode & 0o077:
        what = "directory (mode 0700)" if directory else "file (mode 0600)"
        raise TokenFileError(
            f"{path} is not a private {what} of this user, so it cannot hold the admin token. Remove it "
            f"and dagserve creates it again, or give the token explicitly (--admin-token / ${ADMIN_TOKEN_ENV})."
        )


def private_token_dir() -> Path:
    """:func:`token_dir`, created private (0700) when missing; :class:`TokenFileError` when it
    cannot be created or is not private."""
    path = token_dir()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    except OSError as exc:
        raise TokenFileError(
            f"Cannot create {path} for the admin token: {exc}. Give the token explicitly "
            f"(--admin-token / ${ADMIN_TOKEN_ENV}) or serve with --no-admin."
        ) from None
    _check_private(path, directory=True)
    return path


def write_token_file(host: str, port: int, token: str) -> Path:
    """Store ``token`` for the server on ``host:port``, readable by this user only (0600 in a 0700
    directory); an older file there (a server that was killed) is replaced. Returns the path."""
    path = private_token_dir() / token_path(host, port).name
    try:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, token.encode() + b"\n")
        finally:
            os.close(fd)
        os.replace(tmp, path)  # atomic: a client never reads half a token
    except OSError as exc:
        raise TokenFileError(
            f"Cannot store the admin token in {path.parent}: {exc}. Give the token explicitly "
            f"(--admin-token / ${ADMIN_TOKEN_ENV}) or serve with --no-admin."
        ) from None
    return path


def remove_token_file(path: Path, token: str) -> None:
    """Remove the file written by :func:`write_token_file` if it still holds ``token`` (a newer
    server on the same address may have replaced it)."""
    try:
        if path.read_text().strip() == token:
            path.unlink()
    except OSError:
        pass


def token_for_url(url: str) -> str | None:
    """The token a loopback server at ``url`` stored with :func:`write_token_file`, or ``None``.

    Only loopback URLs are looked up: a token of this machine is never sent elsewhere.
    """
    from dagserve.http.hosts import is_loopback

    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if not parts.hostname or not is_loopback(parts.hostname):
        return None
    candidates = ["127.0.0.1", "::1"] if parts.hostname.lower() == "localhost" else [parts.hostname]
    for host in candidates:
        path = token_path(host, port)
        try:
            _check_private(path.parent, directory=True)
            _check_private(path, directory=False)
            return path.read_text().strip() or None
        except FileNotFoundError:
            continue
    return None


def graph_status(app: App, metrics: Metrics | None = None) -> dict[str, Any]:
    """``app.status().to_dict()`` with per-node ``requests``, ``errors``, ``p50_s``, ``p99_s`` and
    ``rate_per_s``, plus the graph's ``in_flight`` requests and whole-request ``latency``.

    Blocking (``App.status()`` on Ray asks the Serve controller): call it from a thread.
    """
    from dagserve.observe.stats import stats_for

    data = app.status().to_dict()
    counts = _metrics_counts(app, metrics)
    stats = stats_for(app)
    window = stats.deployments(app.plan)
    for name, node in data["nodes"].items():
        lat = window.get(name)
        count = counts.get(name)
        node["requests"] = count["requests"] if count else (lat.count if lat else 0)
        node["errors"] = count["errors"] if count else (lat.errors if lat else 0)
        node["p50_s"] = lat.p50_s if lat else None
        node["p99_s"] = lat.p99_s if lat else None
        node["rate_per_s"] = lat.rate_per_s if lat else None
    whole = stats.requests()
    data["in_flight"] = app.in_flight
    data["latency"] = (
        {"count": whole.count, "errors": whole.errors, "p50_s": whole.p50_s, "p99_s": whole.p99_s, "rate_per_s": whole.rate_per_s}
        if whole
        else None
    )
    return data


def _metrics_counts(app: App, metrics: Metrics | None) -> dict[str, dict[str, int]]:
    from dagserve.observe.metrics import default_metrics

    metrics = metrics if metrics is not None else default_metrics()
    if not any(a is app for a in metrics.apps()):  # not instrumented there: no counts since start
        return {}
    return metrics.node_counts(app.name)


def admin_routes(apps: AppsSource, token: str | None = None, *, metrics: Metrics | None = None) -> list[BaseRoute]:
    """The admin routes for ``apps``, relative to where they are mounted (:data:`ADMIN_PREFIX`), or
    ``[]`` when no token is configured (see :func:`admin_token`). Every route checks the bearer
    token itself (401 missing or malformed, 403 wrong).

    ``metrics`` is where request counts come from (the per-process
    :func:`~dagserve.observe.metrics.default_metrics` by default); Apps given directly (not through a
    callable) are instrumented there now, so counts start with the server. In your own app::

        Starlette(routes=[*graph_routes, Mount(ADMIN_PREFIX, routes=admin_routes(apps, token))])

    (:func:`admin_mount` does exactly that.)
    """
    secret = admin_token(token)
    if secret is None:
        return []
    from starlette.routing import Route

    admin = _Admin(apps, secret.encode(), metrics)
    if not callable(apps) or isinstance(apps, Mapping):
        admin.observe(admin.apps().values())
    return [
        Route("/status", admin.guard(admin.status_all), methods=["GET"], name="admin_status"),
        Route("/graphs/{graph}", admin.guard(admin.status_one), methods=["GET"], name="admin_graph"),
        Route("/graphs/{graph}/nodes/{node}/scale", admin.guard(admin.scale), methods=["POST"], name="admin_scale"),
        Route("/graphs/{graph}/nodes/{node}/update", admin.guard(admin.update), methods=["POST"], name="admin_update"),
    ]


def admin_mount(apps: AppsSource, token: str | None = None, *, metrics: Metrics | None = None) -> list[BaseRoute]:
    """``[Mount(ADMIN_PREFIX, routes=admin_routes(...))]``, or ``[]`` when no token is configured."""
    routes = admin_routes(apps, token, metrics=metrics)
    if not routes:
        return []
    from starlette.routing import Mount

    return [Mount(ADMIN_PREFIX, routes=routes, name="admin")]


Handler = Callable[["Request"], Awaitable["Response"]]


class _Admin:
    def __init__(self, apps: AppsSource, secret: bytes, metrics: Metrics | None) -> None:
        self._source = apps
        self._secret = secret
        self._metrics = metrics

    # -- plumbing ----------------------------------------------------------------------------------
    def guard(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                self._authorize(request)
                return await handler(request)
            except HTTPError as exc:
                _log_refusal(request, exc.status_code, str(exc))
                headers = {"www-authenticate": 'Bearer realm="dagserve-admin"'} if exc.status_code == 401 else None
                return _error(exc.status_code, exc.error_type, str(exc), headers)
            except DagserveError as exc:
                status = 422 if isinstance(exc, GraphError) else exc.status_code
                _log_refusal(request, status, str(exc))
                return _error(status, type(exc).__name__, str(exc))

        endpoint.__name__ = handler.__name__
        return endpoint

    def _authorize(self, request: Request) -> None:
        header = request.headers.get("authorization")
        if header is None:
            raise HTTPError(
                401, "Admin routes need an `Authorization: Bearer <token>` header.", error_type="Unauthorized"
            )
        scheme, _, given = header.strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise HTTPError(
                401, "The Authorization header is malformed; send `Authorization: Bearer <token>`.", error_type="Unauthorized"
            )
        if not hmac.compare_digest(given.encode(), self._secret):
            raise HTTPError(
                403, f"Wrong admin token; use the server's ${ADMIN_TOKEN_ENV}.", error_type="Forbidden"
            )

    def observe(self, apps: Iterable[App]) -> None:
        """Start the request counts and latency windows that status reports."""
        from dagserve.observe.metrics import instrument
        from dagserve.observe.stats import stats_for

        for app in apps:
            if not app.closed:
                instrument(app, self._metrics)
                stats_for(app)

    def apps(self) -> dict[str, App]:
        source: Any = self._source
        if callable(source) and not isinstance(source, Mapping):
            source = source()
        if isinstance(source, Mapping):
            return dict(source)
        return {a.name: a for a in source}

    def _app(self, name: str) -> App:
        apps = self.apps()
        app = apps.get(name)
        if app is None:
            known = ", ".join(sorted(apps)) or "none"
            raise HTTPError(
                404, f"No graph named {name!r} is served here (graphs: {known}).", error_type="GraphNotFound"
            )
        return app

    # -- endpoints ---------------------------------------------------------------------------------
    async def status_all(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        apps = self.apps()

        def collect() -> dict[str, Any]:
            return {"graphs": {name: graph_status(app, self._metrics) for name, app in apps.items() if not app.closed}}

        return _json(await run_in_threadpool(collect))

    async def status_one(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        app = self._app(request.path_params["graph"])
        return _json(await run_in_threadpool(graph_status, app, self._metrics))

    async def scale(self, request: Request) -> Response:
        body = await _body(request)
        if not body:
            raise HTTPError(
                400, 'Send {"num_replicas": N} or {"autoscaling": {...}} as the JSON body.', error_type="BadRequest"
            )
        return await self._change(request, "scale", body)

    async def update(self, request: Request) -> Response:
        body = await _body(request)
        if not body:
            raise HTTPError(
                400, 'Send the options to change as a JSON body, e.g. {"max_batch_size": 16}.', error_type="BadRequest"
            )
        bad = sorted(set(body) - _UPDATE_OPTIONS)
        if bad:
            raise HTTPError(
                422,
                f"Cannot update {', '.join(map(repr, bad))} over HTTP; allowed: {', '.join(sorted(_UPDATE_OPTIONS))}. "
                "Change replicas with .../scale; swap implementations or resources with App.update in Python, "
                "or redeploy.",
                error_type="OptionsError",
            )
        return await self._change(request, "update", body)

    async def _change(self, request: Request, what: str, body: dict[str, Any]) -> Response:
        from starlette.concurrency import run_in_threadpool

        app = self._app(request.path_params["graph"])
        node = request.path_params["node"]
        kwargs = dict(body)
        wait = request.query_params.get("wait_s")
        if wait is not None:
            try:
                kwargs["wait_s"] = float(wait)
            except ValueError:
                raise HTTPError(
                    400, f"wait_s must be a number of seconds, got {wait!r}.", error_type="BadRequest"
                ) from None
        method = app.scale if what == "scale" else app.update

        def run() -> dict[str, Any]:
            method(node, **kwargs)
            status = graph_status(app, self._metrics)
            return {"graph": app.name, "node": status["nodes"][app.plan.deployment(node).name]}

        result = await run_in_threadpool(run)
        log.info("Admin %s of %s/%s done: %s", what, app.name, node, body)  # after it is done, never before
        return _json(result)


def _log_refusal(request: Request, status: int, message: str) -> None:
    """A refused admin request (bad token, unknown graph or node, invalid options) is a warning
    that says it was refused; only what was done is logged as done."""
    log.warning("Admin %s %s refused with %d: %s", request.method, request.url.path, status, message)


async def _body(request: Request) -> dict[str, Any]:
    raw = bytearray()
    async for chunk in request.stream():  # bounded: admin bodies are a few options
        raw += chunk
        if len(raw) > _MAX_ADMIN_BODY_BYTES:
            raise HTTPError(413, message=f"Admin request bodies are at most {_MAX_ADMIN_BODY_BYTES} bytes.")
    if not raw.strip():
        return {}
    try:
        data = parse_json(bytes(raw))
    except JSONBodyError as exc:
        raise HTTPError(400, str(exc), error_type="BadRequest") from None
    if not isinstance(data, dict):
        raise HTTPError(
            400, f"The body must be a JSON object, got {type(data).__name__}.", error_type="BadRequest"
        )
    return data


def _error(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The ingress's error document (:mod:`dagserve.http.errors`), so clients parse one shape."""
    return _json(error_body(status, error_type, message, request_id=current_request_id()), status, headers)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    from starlette.responses import Response

    # lenient: options may hold values JSON has no type for; status tables only print them.
    return Response(dump_json(data, lenient=True), status_code=status, headers=headers, media_type="application/json")
