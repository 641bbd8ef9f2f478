"""The ASGI layer around the ingress's routes: request ids, W3C trace context and the Host check
(:class:`RequestIdMiddleware`), and the refusals dagserve's server decided before a request's
body was read (``SCOPE_REJECT``, from :mod:`dagserve.http.protocol`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import Response

from dagserve.http.errors import error_body, route_path, shaped_error
from dagserve.http.hosts import HostFilter
from dagserve.http.jsonio import dump_json
from dagserve.http.protocol import SCOPE_REJECT
from dagserve.observe.traceparent import TRACEPARENT_HEADER, request_trace
from dagserve.runtime.request_id import (
    REQUEST_ID_HEADER,
    new_request_id,
    reset_request_id,
    sane_request_id,
    set_request_id,
)
from dagserve.runtime.tracing import reset_trace, set_trace

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SCOPE_REQUEST_ID", "SCOPE_TRACE", "RequestIdMiddleware"]

#: Scope key holding the request id (the ASGI scope is shared by every layer of one request).
SCOPE_REQUEST_ID = "dagserve.request_id"
#: Scope key holding the request's W3C trace context (a ``dagserve.runtime.tracing.W3CTrace``).
SCOPE_TRACE = "dagserve.trace"
#: Headers of an answer after which the connection is not reused (the rest of the body is never read).
CLOSE = {"connection": "close"}
_JSON = "application/json"
_RID_HEADER = REQUEST_ID_HEADER.encode()
_TP_HEADER = TRACEPARENT_HEADER.encode()


class RequestIdMiddleware:
    """Gives every HTTP request an id (the client's ``x-request-id`` when sane) and returns it;
    refuses, before any route runs, a request whose ``Host`` ``hosts`` does not accept.

    Pure ASGI (no per-request task or body buffering); the id is in the scope, in a context
    variable for the whole request (so logs, uvicorn's access log and node code see it), and in
    the response header. So is the request's W3C trace context (``SCOPE_TRACE``): the caller's
    ``traceparent``/``tracestate`` when valid, a new trace otherwise (observe/traceparent.py),
    answered in a ``traceparent`` header on every response.
    """

    def __init__(self, app: ASGIApp, hosts: HostFilter | None = None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = host = parent = None
        state: list[bytes] = []
        parents = 0
        for key, value in scope["headers"]:
            if key == _RID_HEADER:
                if given is None:
                    given = value
            elif key == b"host" and host is None:
                host = value
            elif key == b"traceparent":
                parent = value
                parents += 1
            elif key == b"tracestate":
                state.append(value)
        rid = sane_request_id(given) if given is not None else None
        if rid is None:
            rid = new_request_id()
        scope[SCOPE_REQUEST_ID] = rid
        # Every request joins the caller's trace (or starts one), exported or not (observe/traceparent.py).
        trace = scope[SCOPE_TRACE] = request_trace(parent, state, several=parents > 1)
        token = set_request_id(rid)
        trace_token = set_trace(trace.traceparent)
        try:
            refused = scope.get(SCOPE_REJECT)
            if refused is None and self.hosts is not None and not self.hosts.allows(host):
                refused = (403, "HostNotAllowed", self.hosts.refusal(host))
            if refused is not None:
                status, error_type, message = refused
                document = error_body(status, error_type, message, request_id=rid)
                body = dump_json(shaped_error(route_path(scope), status, document))
                headers = {**CLOSE, REQUEST_ID_HEADER: rid, TRACEPARENT_HEADER: trace.traceparent}
                await Response(body, status, headers=headers, media_type=_JSON)(scope, receive, send)
                return
            id_header = (_RID_HEADER, rid.encode())

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    # The trace's flags are final once the request ran (a tracer's sampler decides them).
                    extra = (id_header, (_TP_HEADER, trace.traceparent.encode()))
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
                await send(message)

            await self.app(scope, receive, send_with_id)
        finally:
            reset_trace(trace_token)
            reset_request_id(token)
