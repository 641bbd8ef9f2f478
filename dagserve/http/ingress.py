"""The HTTP ingress: a Starlette application that runs graphs per request.

Routes (one graph: ``POST /``, also at ``POST /<name>``; several: ``POST /<name>`` each and
``GET /`` lists them)::

    POST /<name>        run the graph on the body               (bearer token if configured)
                        JSON; multipart or a raw file when its schema has a binary field (http/bodies.py)
    GET  /              list the graphs (several graphs only)   (bearer token if configured)
    GET  /openapi.json  OpenAPI 3.1 description
    GET  /docs          interactive page (Swagger UI, served from the package)
    GET  /-/dashboard   the live dashboard, and /-/dashboard/data its JSON (dagserve.http.dashboard)
    GET  /-/static/...  the pages' scripts and styles (dagserve.http.assets)
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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from dagserve._errors import DagserveError, GraphError
from dagserve.graph.graph import RESERVED_GRAPH_NAMES
from dagserve.http.admin import admin_routes
from dagserve.http.assets import DOCS_CSP, STATIC_PREFIX, page_headers, static_endpoint
from dagserve.http.bodies import graph_door
from dagserve.http.body_reader import BodyReader
from dagserve.http.calls import Call
from dagserve.http.dashboard import Dashboard
from dagserve.http.connections import SCOPE_HANGUP, HangUpWatch, cancel_on_hang_up
from dagserve.http.doors import Door
from dagserve.http.errors import HTTPError, error_body, error_from_exception, error_shape, status_type
from dagserve.http.hosts import HostFilter
from dagserve.http.jsonio import dump_json
from dagserve.http.errors import client_gone as _gone
from dagserve.http.job_routes import JobRoutes
from dagserve.http.middleware import CLOSE, SCOPE_REQUEST_ID, SCOPE_TRACE, RequestIdMiddleware
from dagserve.http.oip_rest import oip_routes
from dagserve.http.openapi import docs_page, openapi_document
from dagserve.http.stream_answers import Framing, StreamAnswer, first_item, stream_format
from dagserve.observe.logs import log_failure
from dagserve.observe.metrics import metrics_endpoint
from dagserve.observe.server_timing import TRACE_HEADER
from dagserve.render import live_svg
from dagserve.runtime.executor import RequestContext
from dagserve.runtime.request_id import new_request_id

if TYPE_CHECKING:
    from starlette.types import Receive, Scope

    from dagserve.app import App
    from dagserve.http.settings import IngressConfig


__all__ = ["Ingress", "create_app"]

logger = logging.getLogger("dagserve.http")

_JSON = "application/json"


#: Routes of the ingress besides its graph routes: given the ingress, its routes
#: (``dagserve.http.openai_routes.openai_routes``). They enter graphs through :meth:`Ingress.run_request`.
RouteSet = Callable[["Ingress"], list[BaseRoute]]


def create_app(apps: Mapping[str, App], config: IngressConfig, route_sets: tuple[RouteSet, ...] = ()) -> Starlette:
    """The Starlette application serving ``apps`` (graph name -> App) with ``config``, and the
    routes of ``route_sets``."""
    return Ingress(apps, config, route_sets).starlette


class Ingress:
    """One ingress: its graphs, limits and counters, and the Starlette app that routes to them."""

    def __init__(self, apps: Mapping[str, App], config: IngressConfig, route_sets: tuple[RouteSet, ...] = ()) -> None:
        if not apps:
            raise GraphError("The ingress needs at least one App to serve.")
        for name in apps:
            if name in RESERVED_GRAPH_NAMES:  # graphs are refused when built; a plan made otherwise is too
                raise GraphError(
                    f"Graph name {name!r} clashes with {RESERVED_GRAPH_NAMES[name]}; rename the graph "
                    f"(reserved: {', '.join(RESERVED_GRAPH_NAMES)})."
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
        self.bodies = BodyReader(config)  # bodies read within the limits (http/body_reader.py)
        self._openapi: dict[str, bytes] = {}
        #: What the route sets add to the OpenAPI document: ``{"paths": {...}, "schemas": {...}}``.
        self.described: dict[str, dict[str, Any]] = {"paths": {}, "schemas": {}}
        self.jobs = JobRoutes(self)  # http/job_routes.py
        self.starlette = Starlette(
            routes=self._routes() + [route for routes in route_sets for route in routes(self)],
            # Right inside Starlette's own error middleware: the id exists before any route runs.
            middleware=[Middleware(RequestIdMiddleware, hosts=_host_filter(config.allowed_hosts))],
            exception_handlers={HTTPException: self._http_exception, DagserveError: self._dagserve_exception},
        )
        self.starlette.state.dagserve = self

    async def prepare(self) -> None:
        """Before the server says it is ready: each graph opens its connections (``App.aprepare``),
        so the first request is not the one that pays for them. A failure here is logged, not
        raised: that graph's first request then opens them."""
        for name, app in self.apps.items():
            try:
                await app.aprepare()
            except Exception:  # noqa: BLE001 - best effort; requests still work without it
                logger.exception("preparing graph %r before serving failed", name)

    # -- routing ---------------------------------------------------------------------------------
    def graph_routes(self, suffix: str, endpoint: Callable[[App], Any], route_name: str) -> list[BaseRoute]:
        """A ``POST`` route per served graph at ``/<name><suffix>``, plus ``<suffix>`` (``/`` when
        empty) for the only one when one graph is served; ``endpoint(app)`` makes each handler."""
        routes: list[BaseRoute] = []
        for name, app in self.apps.items():
            handler = endpoint(app)
            if self.single:
                routes.append(Route(suffix or "/", handler, methods=["POST"], name=route_name))
            routes.append(Route(f"/{name}{suffix}", handler, methods=["POST"], name=f"{route_name}:{name}"))
        return routes

    def _routes(self) -> list[BaseRoute]:
        routes = self.graph_routes("", self._graph_endpoint, "graph")
        if not self.single:
            routes.append(Route("/", self._list_graphs, methods=["GET"], name="graphs"))
        routes += [
            Route("/openapi.json", self._openapi_json, methods=["GET"], name="openapi"),
            Route("/docs", self._docs, methods=["GET"], name="docs"),
            Route("/-/healthz", self._healthz, methods=["GET"], name="healthz"),
            Route("/-/ready", self._ready, methods=["GET"], name="ready"),
            Route("/-/graph", self._plan_json, methods=["GET"], name="plan"),
            Route("/-/graph.svg", self._plan_svg, methods=["GET"], name="plan_svg"),
            Route(STATIC_PREFIX + "/{path:path}", static_endpoint, methods=["GET"], name="static"),
        ]
        routes += self.jobs.routes()
        routes.append(Route("/metrics", self._guarded(metrics_endpoint(self.apps)), methods=["GET"], name="metrics"))
        # /v2/...: the Open Inference Protocol (http/oip_rest.py)
        routes += oip_routes(self.apps, self.authorize, self.run_graph, lambda: self.draining)
        routes += Dashboard(self.apps, self.config, check_bearer).routes()
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
    def _graph_endpoint(self, app: App, door: Door | None = None) -> Callable[[Request], Awaitable[Response]]:
        """The route of ``app``'s graph through ``door``: by default dagserve's own, which takes
        JSON, and files (multipart, a raw body, base64) for a schema with binary fields (http/bodies.py)."""
        if door is None:
            config = self.config
            door = graph_door(app.plan.input_schema, config.max_form_parts, config.max_form_field_bytes)

        async def run_graph(request: Request) -> Response:
            return await self.run_request(request, door, functools.partial(self._answer_graph, app))

        return run_graph

    async def _answer_graph(self, app: App, call: Call) -> Response:
        """A graph route's answer: the graph run on the call's payload, its output through the
        call's door (or its stream, by Accept)."""
        door = call.door
        ctx = call.context(door.protocol)
        if door.streams and app.streams and (fmt := stream_format(call.accept)) != _JSON:  # http/stream_answers.py
            items = app.astream(call.payload, context=ctx)
            first = await self.run(call, app, lambda: first_item(items))
            return self.streamed(call, items, first, fmt)  # type: ignore[return-value]
        result = await self.run(call, app)
        if call.size <= _PARSE_INLINE_BYTES:
            content, media, headers = door.encode(result, call.state)
        else:  # a large request makes a large answer, as a rule: written off the event loop too
            content, media, headers = await run_in_threadpool(door.encode, result, call.state)
        timing = call.headers()
        if headers:
            timing = {**headers, **(timing or {})}
        return Response(content, media_type=media, headers=timing)

    async def run_graph(self, request: Request, app: App, door: Door) -> Response:
        """One request of ``app``'s graph through ``door`` (the OIP infer routes' way in)."""
        return await self.run_request(request, door, functools.partial(self._answer_graph, app))

    # -- what every door shares (graph routes, OIP's, the OpenAI routes in openai_routes.py) -------
    async def run_request(self, request: Request, door: Door, answer: Callable[[Call], Awaitable[Response]]) -> Response:
        """One request through ``door`` (http/doors.py): the token, the door's type check,
        admission, the body read within its limits and decoded by the door (on a worker thread
        when large), then ``answer(call)``; a failure anywhere is the door's error answer
        (errors.py), and a client that hangs up is let go. The graph's own run, its request scope
        (runtime/scope.py), is the answer's: :meth:`run`."""
        rid: str = request.scope.get(SCOPE_REQUEST_ID) or new_request_id()
        start = time.perf_counter()
        auth, content_type, content_length, trace, expect, accept = _graph_headers(request.scope)
        call: Call | None = None
        admitted = reading = False
        try:
            if self._token is not None:
                check_bearer(auth, self._token)
            door.check(request.scope, content_type)
            self._admit()  # before the body: a slow upload holds a slot too (body_timeout_s bounds it)
            admitted = reading = True
            body = await self.bodies.read(request, content_length, expect)
            if len(body) <= _PARSE_INLINE_BYTES:
                payload, state = door.decode(body, request.scope, self.config.max_json_depth)
            else:  # on a worker thread, so that the event loop keeps serving meanwhile
                payload, state = await run_in_threadpool(door.decode, body, request.scope, self.config.max_json_depth)
            call = Call(request, rid, payload, accept, trace, start, door=door, state=state, size=len(body))
            return await answer(call)
        except ClientDisconnect:  # nobody is listening any more; answer for the log's sake
            return self._error_response(_gone("before sending the whole body"), request, rid, shape=door.shape)
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
            return self._error_response(exc, request, rid, shape=door.shape)
        except Exception as exc:
            headers = call.headers() if call is not None else None
            if not reading and not await self.bodies.discard(request, content_length, expect):
                headers = {**(headers or {}), **CLOSE}
            return self._error_response(exc, request, rid, headers, shape=door.shape)
        finally:
            if admitted and not (call is not None and call.held):
                self.in_flight -= 1

    async def run(self, call: Call, app: App, run: Callable[[], Awaitable[Any]] | None = None) -> Any:
        """``app.acall`` on the call's payload (or ``run``), cancelled when the client hangs up."""
        assert call.ctx is not None  # set by call.context() first
        return await self._run_watched(app, call.payload, call.ctx, call.request, run)

    def streamed(
        self, call: Call, items: AsyncIterator[Any], first: tuple[bool, Any], fmt: str | Framing
    ) -> StreamAnswer:
        """The answer that streams ``items`` (``first`` awaited already); it holds the call's
        admission slot until the stream ends."""
        call.held = True
        rid, headers, debug = call.request_id, call.headers(), self.config.debug
        return StreamAnswer(items, first, fmt, request_id=rid, headers=headers, on_end=self._release, debug=debug)

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
    def authorize(self, request: Request) -> None:
        """401 :class:`HTTPError` unless the request carries the graph token (when there is one)."""
        self.check_token(request.headers.get("authorization"))

    def check_token(self, header: str | None) -> None:
        """401 unless ``header`` (an Authorization value) carries the token, when one is configured."""
        if self._token is not None:
            check_bearer(header, self._token)

    def _guarded(self, endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            self.authorize(request)
            return await endpoint(request)

        return guarded

    # -- other routes ------------------------------------------------------------------------------
    async def _list_graphs(self, request: Request) -> Response:
        self.authorize(request)
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
                    self.apps,
                    single=self.single,
                    auth=self._token is not None,
                    root_path=root,
                    title=self.config.title,
                    described=self.described,
                )
            )
            self._openapi[root] = doc
        return Response(doc, media_type=_JSON)

    async def _docs(self, request: Request) -> Response:
        title = self.config.title or ("dagserve: " + ", ".join(self.apps))
        return HTMLResponse(docs_page(title, "openapi.json"), headers=page_headers(DOCS_CSP))

    async def _healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def _ready(self, request: Request) -> Response:
        if self.draining:
            raise HTTPError(503, "The server is shutting down.", error_type="NotReady", headers={"retry-after": "5"})
        # Ready means serving: every node of every graph runs a replica. Replicas still pending
        # (scaling up, or waiting for room on the cluster) are listed, but do not hold it back.
        states: dict[str, bool] = {}
        pending: dict[str, dict[str, Any]] = {}
        for name, app in self.apps.items():
            try:
                status = await run_in_threadpool(app.status)
            except Exception:  # a closed App or an unreachable backend is simply not ready
                states[name] = False
                continue
            states[name] = status.serving
            if status.pending:
                pending[name] = status.pending
        if all(states.values()):
            return _json({"ready": True, "graphs": states, "pending": pending})
        waiting = ", ".join(n for n, ok in states.items() if not ok)
        raise HTTPError(
            503,
            f"Not ready: {waiting} (a node has no running replica yet: starting, or unhealthy).",
            error_type="NotReady",
            headers={"retry-after": "5"},
            extra={"graphs": states, "pending": pending},
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
        self.authorize(request)
        return _json(self._pick_app(request).plan.summary())

    async def _plan_svg(self, request: Request) -> Response:
        self.authorize(request)
        app = self._pick_app(request)
        svg = await run_in_threadpool(live_svg, app)
        return Response(svg, media_type="image/svg+xml")

    # -- errors ------------------------------------------------------------------------------------
    def _error_response(
        self,
        exc: BaseException,
        request: Request,
        rid: str,
        extra_headers: Mapping[str, str] | None = None,
        *,
        shape: str | None = None,
    ) -> Response:
        if shape is None:
            shape = error_shape(request.scope.get("path", ""), request.scope.get("root_path", ""))
        status, body, headers = error_from_exception(exc, request_id=rid, debug=self.config.debug, shape=shape)
        self.log_failure(exc, status, rid, request.scope.get(SCOPE_TRACE))
        if extra_headers:
            headers.update(extra_headers)
        return _error(status, body, headers)

    def log_failure(self, exc: BaseException, status: int, rid: str, trace: Any = None) -> None:
        """The server log's line for a failed request: a node's failure with its traceback, the
        request id and ``trace`` (observe/logs.py); an unexpected error with the ingress's traceback."""
        if status >= 500:
            if isinstance(exc, DagserveError):
                log_failure(logger, exc, rid, status, trace)
            else:
                logger.error("request %s failed", rid, exc_info=exc)
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("request %s rejected with %s: %s", rid, status, exc)

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
        shape = error_shape(request.url.path, request.scope.get("root_path", ""))
        body = error_body(status, status_type(status), message, request_id=_rid(request.scope), shape=shape)
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




def _rid(scope: Scope) -> str:
    return scope.get(SCOPE_REQUEST_ID) or new_request_id()


def _json(data: Any, status: int = 200) -> Response:
    return Response(dump_json(data), status_code=status, media_type=_JSON)


def _error(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
    if status == 503:
        headers.setdefault("retry-after", "1")
    return Response(dump_json(body), status_code=status, media_type=_JSON, headers=headers)
