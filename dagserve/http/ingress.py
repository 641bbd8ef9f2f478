"""The HTTP ingress: a Starlette application that runs graphs per request.

Routes (one graph: ``POST /``, also at ``POST /<name>``; several: ``POST /<name>`` each and
``GET /`` lists them)::

    POST /<name>        run the graph on the JSON body          (bearer token if configured)
    GET  /              list the graphs (several graphs only)   (bearer token if configured)
    GET  /openapi.json  OpenAPI 3.1 description
    GET  /docs          interactive page (Swagger UI from a CDN)
    GET  /-/healthz     the process answers
    GET  /-/ready       every deployment of every graph is ready (503 otherwise)
    GET  /-/graph       the plan as JSON          (?graph=<name> when several)
    GET  /-/graph.svg   the live diagram          (?graph=<name> when several)
    GET  /metrics       from dagserve.observe.metrics, when it is available
    *    /-/admin/...   from dagserve.http.admin, only when an admin token is configured
                        (its routes check that token themselves)

Every non-2xx answer has the shape documented in :mod:`dagserve.http.errors`; every answer
carries ``x-request-id``. This module imports Starlette at the top: import it lazily.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from dagserve._errors import DagserveError, GraphError
from dagserve.http.admin import admin_routes
from dagserve.http.errors import HTTPError, error_body, error_from_exception, status_type
from dagserve.http.errors import client_gone as _gone
from dagserve.http.hosts import HostFilter
from dagserve.http.job_routes import JobRoutes
from dagserve.http.jsonio import check_content_type as _check_content_type
from dagserve.http.jsonio import dump_json, parse_json
from dagserve.http.middleware import CLOSE, SCOPE_REQUEST_ID, SCOPE_TRACE, RequestIdMiddleware
from dagserve.http.openapi import docs_page, openapi_document
from dagserve.http.protocol import SCOPE_HANGUP, HangUpWatch, cancel_on_hang_up
from dagserve.http.streaming import StreamAnswer, first_item, stream_format
from dagserve.observe.metrics import metrics_endpoint
from dagserve.observe.trace import TRACE_HEADER, response_headers, trace_requested
from dagserve.render import live_svg
from dagserve.runtime.deadlines import FixedTimeout
from dagserve.runtime.executor import RequestContext
from dagserve.runtime.request_id import new_request_id

if TYPE_CHECKING:
    from starlette.types import Receive, Scope

    from dagserve.app import App
    from dagserve.http.config import IngressConfig


__all__ = ["Ingress", "create_app"]

logger = logging.getLogger("dagserve.http")

#: Paths a graph name may not take.
RESERVED_NAMES = frozenset({"openapi.json", "docs", "metrics"})
_JSON = "application/json"


def create_app(apps: Mapping[str, App], config: IngressConfig) -> Starlette:
    """The Starlette application serving ``apps`` (graph name -> App) with ``config``."""
    return Ingress(apps, config).starlette


class Ingress:
    """One ingress: its graphs, limits and counters, and the Starlette app that routes to them."""

    def __init__(self, apps: Mapping[str, App], config: IngressConfig) -> None:
        if not apps:
            raise GraphError("The ingress needs at least one App to serve.")
        for name in apps:
            if name in RESERVED_NAMES:
                raise GraphError(
                    f"Graph name {name!r} clashes with the ingress route /{name}; rename the graph "
                    f"(names {sorted(RESERVED_NAMES)} are reserved)."
                )
        self.apps = dict(apps)
        self.config = config
        self.single = len(self.apps) == 1
        #: Graph requests running now (bounded by ``config.max_in_flight``).
        self.in_flight = 0
        #: Requests admitted since start (graph requests and job submissions): jobs yield to them.
        self.admitted = 0
        #: Set when the server starts shutting down: /-/ready answers 503 from then on.
        self.draining = False
        self._token = _token_bytes(config.token)
        # The body deadline, on one loop timer for all requests (see runtime/deadlines.py).
        self._body_deadline = FixedTimeout(config.body_timeout_s)
        self._openapi: dict[str, bytes] = {}
        self.jobs = JobRoutes(self)  # http/job_routes.py
        self.starlette = Starlette(
            routes=self._routes(),
            # Right inside Starlette's own error middleware: the id exists before any route runs.
            middleware=[Middleware(RequestIdMiddleware, hosts=_host_filter(config.allowed_hosts))],
            exception_handlers={HTTPException: self._http_exception, DagserveError: self._dagserve_exception},
        )
        self.starlette.state.dagserve = self

    # -- routing ---------------------------------------------------------------------------------
    def _routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = []
        for name, app in self.apps.items():
            endpoint = self._graph_endpoint(app)
            if self.single:
                routes.append(Route("/", endpoint, methods=["POST"], name="graph_root"))
            routes.append(Route(f"/{name}", endpoint, methods=["POST"], name=f"graph:{name}"))
        if not self.single:
            routes.append(Route("/", self._list_graphs, methods=["GET"], name="graphs"))
        routes += [
            Route("/openapi.json", self._openapi_json, methods=["GET"], name="openapi"),
            Route("/docs", self._docs, methods=["GET"], name="docs"),
            Route("/-/healthz", self._healthz, methods=["GET"], name="healthz"),
            Route("/-/ready", self._ready, methods=["GET"], name="ready"),
            Route("/-/graph", self._plan_json, methods=["GET"], name="plan"),
            Route("/-/graph.svg", self._plan_svg, methods=["GET"], name="plan_svg"),
        ]
        routes += self.jobs.routes()
        routes.append(Route("/metrics", self._guarded(metrics_endpoint(self.apps)), methods=["GET"], name="metrics"))
        admin_token = self.config.admin_token
        if admin_token:
            # The admin module checks its token on every route itself (401 missing, 403 wrong).
            routes.append(Mount("/-/admin", routes=list(admin_routes(self.apps, admin_token)), name="admin"))
        return routes

    # -- the server's start and stop (dagserve's uvicorn server calls them on its loop) ----------
    def start(self) -> None:
        """Start the Apps' job workers on this loop: jobs a previous server left queued run now."""
        self.jobs.queues()

    async def stop(self) -> None:
        """Once requests in flight finished: stop the job workers (their jobs go back to the queue)."""
        await self.jobs.stop()

    # -- graph routes ----------------------------------------------------------------------------
    def _graph_endpoint(self, app: App) -> Callable[[Request], Awaitable[Response]]:
        async def run_graph(request: Request) -> Response:
            rid: str = request.scope.get(SCOPE_REQUEST_ID) or new_request_id()
            ctx: RequestContext | None = None
            start = time.perf_counter()
            auth, content_type, content_length, trace, expect, accept = _graph_headers(request.scope)
            admitted = reading = False
            try:
                if self._token is not None:
                    check_bearer(auth, self._token)
                _check_content_type(content_type)
                self._admit()  # before the body: a slow upload holds a slot too (body_timeout_s bounds it)
                admitted = reading = True
                body = await self._read_body(request, content_length, expect)
                if len(body) <= _PARSE_INLINE_BYTES:
                    payload = parse_json(body, max_depth=self.config.max_json_depth)
                else:  # on a worker thread, so that the event loop keeps serving meanwhile
                    payload = await run_in_threadpool(parse_json, body, max_depth=self.config.max_json_depth)
                ctx = RequestContext(request_id=rid, trace=request.scope.get(SCOPE_TRACE))
                if app.streams and (fmt := stream_format(accept)) != _JSON:  # http/streaming.py
                    items = app.astream(payload, context=ctx)
                    first = await self._run_watched(app, payload, ctx, request, lambda: first_item(items))
                    admitted = False  # the answer holds its slot until the stream ends
                    return StreamAnswer(  # type: ignore[return-value]
                        items, first, fmt, request_id=rid, headers=_trace(trace, ctx, start), on_end=self._release,
                        debug=self.config.debug,
                    )
                result = await self._run_watched(app, payload, ctx, request)
                content = dump_json(result)
            except ClientDisconnect:  # nobody is listening any more; answer for the log's sake
                return self._error_response(_gone("before sending the whole body"), request, rid)
            except asyncio.CancelledError:
                if not self.draining:
                    raise
                # The server's shutdown grace period ran out: say so instead of a bare 500.
                exc = HTTPError(
                    503,
                    "The server shut down before this request finished (its shutdown grace period ran out); retry it.",
                    error_type="ShuttingDown",
                    headers=CLOSE,
                )
                return self._error_response(exc, request, rid)
            except Exception as exc:
                headers = _trace(trace, ctx, start)
                if not reading and not await self._discard_body(request, content_length, expect):
                    headers = {**(headers or {}), **CLOSE}
                return self._error_response(exc, request, rid, headers)
            finally:
                if admitted:
                    self.in_flight -= 1
            return Response(content, media_type=_JSON, headers=_trace(trace, ctx, start))

        return run_graph

    def _admit(self) -> None:
        """Count one more graph request, or refuse it with 503 when ``max_in_flight`` run already."""
        limit = self.config.max_in_flight
        if limit is not None and self.in_flight >= limit:
            raise HTTPError(
                503,
                f"The server already runs {self.in_flight} requests (max_in_flight={limit}); retry shortly.",
                error_type="OverloadedError",
                headers={"retry-after": "1"},
            )
        self.in_flight += 1
        self.admitted += 1

    async def _read_body(self, request: Request, declared: str | None, expect: str | None) -> bytes:
        """The body, read as it streams in, stopped at the size limit or the deadline.

        ``declared`` is the Content-Length header, ``expect`` the Expect header, if any. A body
        over the limit gets 413 once its rest is read and dropped (see :meth:`_discard_body`).
        """
        limit = self.config.max_body_bytes
        if declared is not None:
            if not declared.isdigit():
                raise HTTPError(400, f"The Content-Length header {declared!r} is not a number.", headers=CLOSE)
            if int(declared) > limit:
                drained = await self._discard_body(request, declared, expect)
                raise HTTPError(413, _too_large(int(declared), limit), headers=None if drained else CLOSE)
        chunks: list[bytes] = []
        size = 0
        try:
            async with self._body_deadline():
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        break
                    if chunk:
                        chunks.append(chunk)
        except TimeoutError:
            raise HTTPError(
                408,
                error_type="RequestBodyTimeout",
                message=f"The request body did not arrive within {self.config.body_timeout_s:g} s "
                f"({size} bytes came); send it faster or raise body_timeout_s.",
                headers=CLOSE,
            ) from None
        if size > limit:  # a body without Content-Length (chunked) that grew past the limit
            drained = await self._discard_body(request, None, None, read=size)
            raise HTTPError(413, _too_large(None, limit), headers=None if drained else CLOSE)
        return b"".join(chunks)

    async def _discard_body(self, request: Request, declared: str | None, expect: str | None, read: int = 0) -> bool:
        """Read and drop the rest of a body the ingress refused; ``True`` once it is all read.

        Clients such as urllib and requests send the whole body before they read the answer: a
        connection closed with their body unread resets, and they never see the answer. So the
        rest is read (``read`` bytes came already), up to twice ``max_body_bytes`` in all and
        within ``body_timeout_s``; beyond either, or when the client waits for
        ``100 Continue`` before sending, ``False``: answer with ``Connection: close``.
        """
        if read == 0 and expect is not None and expect.strip().lower() == "100-continue":
            return False  # nothing sent yet; reading would ask for the body with 100 Continue
        cap = 2 * self.config.max_body_bytes
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            return False
        try:
            async with self._body_deadline():
                while True:
                    message = await request.receive()
                    if message["type"] != "http.request":
                        return False  # the client went away
                    read += len(message.get("body", b""))
                    if read > cap:
                        return False
                    if not message.get("more_body", False):
                        return True
        except TimeoutError:
            return False

    def _release(self) -> None:
        self.in_flight -= 1

    async def _run_watched(
        self, app: App, payload: Any, ctx: RequestContext, request: Request, run: Callable[[], Awaitable[Any]] | None = None
    ) -> Any:
        """``app.acall``, cancelled (and :class:`HTTPError` 499) when the client hangs up meanwhile.

        The graph's calls are cancelled as a deadline cancels them (on Ray, in the replicas), and
        the App's observers count the request as ``cancelled``. ``run``: what to await instead of
        ``app.acall`` (a stream's first item). dagserve's own server says when a
        connection is lost (:class:`HangUpWatch`, nearly free); under another server a task
        waits for ``http.disconnect`` (~15 µs per request).
        """
        task = asyncio.current_task()
        assert task is not None  # an ASGI request always runs in a task
        watch: HangUpWatch | None = request.scope.get(SCOPE_HANGUP)
        if run is None:
            run = functools.partial(app.acall, payload, context=ctx)
        if watch is None:
            return await self._run_watching_receive(run, request.receive, task)
        if watch.gone:
            raise _gone("before its graph ran")
        hook = task.cancel
        watch.hooks.add(hook)
        try:
            return await run()
        except asyncio.CancelledError:
            if not watch.gone or hook in watch.hooks:
                raise  # not the client: the server's shutdown
            task.uncancel()
            raise _gone(_GONE_WHILE_RUNNING) from None
        finally:
            watch.hooks.discard(hook)  # before this task next yields: the hook can no longer fire

    async def _run_watching_receive(self, run: Callable[[], Awaitable[Any]], receive: Receive, task: asyncio.Task[Any]) -> Any:
        watcher = asyncio.get_running_loop().create_task(cancel_on_hang_up(receive, task))
        try:
            return await run()
        except asyncio.CancelledError:
            if not (watcher.done() and not watcher.cancelled() and watcher.result()):
                raise  # not the client: the server's shutdown
            task.uncancel()
            raise _gone(_GONE_WHILE_RUNNING) from None
        finally:
            # Cancelled before this task next yields: the watcher can no longer cancel it.
            watcher.cancel()

    # -- auth --------------------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if self._token is not None:
            check_bearer(request.headers.get("authorization"), self._token)

    def _guarded(self, endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            self._authorize(request)
            return await endpoint(request)

        return guarded

    # -- other routes ------------------------------------------------------------------------------
    async def _list_graphs(self, request: Request) -> Response:
        self._authorize(request)
        root = request.scope.get("root_path", "")
        graphs = [
            {"name": name, "path": f"{root}/{name}", "description": app.graph.description}
            for name, app in self.apps.items()
        ]
        return _json({"graphs": graphs})

    async def _openapi_json(self, request: Request) -> Response:
        root = request.scope.get("root_path", "")
        doc = self._openapi.get(root)
        if doc is None:
            doc = dump_json(
                openapi_document(
                    self.apps, single=self.single, auth=self._token is not None, root_path=root, title=self.config.title
                )
            )
            self._openapi[root] = doc
        return Response(doc, media_type=_JSON)

    async def _docs(self, request: Request) -> Response:
        title = self.config.title or ("dagserve: " + ", ".join(self.apps))
        return HTMLResponse(docs_page(title, "openapi.json"))

    async def _healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def _ready(self, request: Request) -> Response:
        if self.draining:
            raise HTTPError(503, "The server is shutting down.", error_type="NotReady", headers={"retry-after": "5"})
        states: dict[str, bool] = {}
        for name, app in self.apps.items():
            try:
                states[name] = (await run_in_threadpool(app.status)).ready
            except Exception:  # a closed App or an unreachable backend is simply not ready
                states[name] = False
        if all(states.values()):
            return _json({"ready": True, "graphs": states})
        waiting = ", ".join(n for n, ok in states.items() if not ok)
        raise HTTPError(
            503,
            f"Not ready: {waiting} (a deployment is starting, scaling up or unhealthy).",
            error_type="NotReady",
            headers={"retry-after": "5"},
            extra={"graphs": states},
        )

    def _pick_app(self, request: Request) -> App:
        name = request.query_params.get("graph")
        if name is None:
            if self.single:
                return next(iter(self.apps.values()))
            raise HTTPError(400, f"Several graphs are served; add ?graph=<name> (one of {sorted(self.apps)}).")
        app = self.apps.get(name)
        if app is None:
            raise HTTPError(404, f"No graph {name!r} is served here; graphs: {sorted(self.apps)}.")
        return app

    async def _plan_json(self, request: Request) -> Response:
        self._authorize(request)
        return _json(self._pick_app(request).plan.summary())

    async def _plan_svg(self, request: Request) -> Response:
        self._authorize(request)
        app = self._pick_app(request)
        svg = await run_in_threadpool(live_svg, app)
        return Response(svg, media_type="image/svg+xml")

    # -- errors ------------------------------------------------------------------------------------
    def _error_response(
        self, exc: BaseException, request: Request, rid: str, extra_headers: Mapping[str, str] | None = None
    ) -> Response:
        status, body, headers = error_from_exception(exc, request_id=rid, debug=self.config.debug)
        if status >= 500:
            if isinstance(exc, DagserveError):
                logger.warning("request %s failed with %s: %s", rid, status, exc)
            else:
                logger.error("request %s failed", rid, exc_info=exc)
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("request %s rejected with %s: %s", rid, status, exc)
        if extra_headers:
            headers.update(extra_headers)
        return _error(status, body, headers)

    async def _dagserve_exception(self, request: Request, exc: Exception) -> Response:
        return self._error_response(exc, request, _rid(request.scope))

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # registered for HTTPException only
        status = exc.status_code
        path = request.url.path
        if status == 404:
            message = f"There is no route {path!r}; the routes are listed at /openapi.json and /docs."
        elif status == 405:
            allow = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow", "")
            message = f"{path!r} does not accept {request.method}; use {allow or 'another method'}."
        else:
            message = exc.detail if isinstance(exc.detail, str) else status_type(status)
        body = error_body(status, status_type(status), message, request_id=_rid(request.scope))
        return _error(status, body, dict(exc.headers or {}))


def check_bearer(header: str | None, token: bytes) -> None:
    """Raise a 401 :class:`HTTPError` unless ``header`` is ``Bearer <token>`` (constant-time compare)."""
    if header is None:
        raise HTTPError(
            401,
            "This route needs a bearer token: send the header 'Authorization: Bearer <token>'.",
            headers={"www-authenticate": 'Bearer realm="dagserve"'},
        )
    scheme, _, value = header.strip().partition(" ")
    given = value.strip().encode("latin-1", "replace")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, token):
        raise HTTPError(
            401,
            "The bearer token is missing or wrong; send 'Authorization: Bearer <token>' with the server's token.",
            headers={"www-authenticate": 'Bearer realm="dagserve", error="invalid_token"'},
        )


# -- helpers -----------------------------------------------------------------------------------------

#: Bodies up to this size are parsed on the event loop (well under a millisecond); larger ones on a thread.
_PARSE_INLINE_BYTES = 64 * 1024


_GONE_WHILE_RUNNING = "while its graph ran; the graph's work was cancelled"


def _host_filter(allowed_hosts: tuple[str, ...] | None) -> HostFilter | None:
    return None if allowed_hosts is None else HostFilter(allowed_hosts)


def _token_bytes(token: str | None) -> bytes | None:
    return token.encode("utf-8") if token else None


#: Request headers a graph route reads -> their place in _graph_headers' answer.
_GRAPH_HEADERS = {
    b"authorization": 0,
    b"content-type": 1,
    b"content-length": 2,
    TRACE_HEADER.encode(): 3,
    b"expect": 4,
    b"accept": 5,
}


def _graph_headers(scope: Scope) -> list[str | None]:
    """Authorization, Content-Type, Content-Length, x-dagserve-trace, Expect and Accept (the first
    of each, or ``None``), in one pass over the raw headers (whose names ASGI gives in lower case)."""
    found: list[str | None] = [None, None, None, None, None, None]
    for key, value in scope["headers"]:
        i = _GRAPH_HEADERS.get(key)
        if i is not None and found[i] is None:
            found[i] = value.decode("latin-1")
    return found


def _trace(value: str | None, ctx: RequestContext | None, start: float) -> dict[str, str] | None:
    """Timing headers when the client asked for them (``value``: its x-dagserve-trace header),
    and the nodes an ``optional`` skipped."""
    if ctx is None or (value is None and not ctx.skipped):
        return None
    traced = value is not None and trace_requested({TRACE_HEADER: value})
    return response_headers(ctx, traced, time.perf_counter() - start)


def _too_large(declared: int | None, limit: int) -> str:
    size = f"is {declared} bytes" if declared is not None else "is larger than that"
    return f"The request body {size}; the limit is {limit} bytes (max_body_bytes). Send less, or raise the limit."


def _rid(scope: Scope) -> str:
    return scope.get(SCOPE_REQUEST_ID) or new_request_id()


def _json(data: Any, status: int = 200) -> Response:
    return Response(dump_json(data), status_code=status, media_type=_JSON)


def _error(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
    if status == 503:
        headers.setdefault("retry-after", "1")
    return Response(dump_json(body), status_code=status, media_type=_JSON, headers=headers)
