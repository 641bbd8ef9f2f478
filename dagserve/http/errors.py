"""The one error shape every non-2xx answer of the ingress uses, and how errors map onto it.

::

    {"error": {"type": "ValueError", "message": "Node 'clean' raised ValueError: ...",
               "status": 500, "node": "clean", "request_id": "9c95e3..."}}

``type`` is the original exception's type name for a failing node (:class:`~dagserve.NodeError`),
the dagserve error's class name for other dagserve errors, and a fixed name for HTTP-level ones
(``InvalidJSON``, ``NotFound`` ...). ``node`` is ``null`` unless a node is to blame. A 422 adds
``errors`` (one entry per field: ``loc``, ``msg``, ``type``); debug mode adds ``traceback``.
Standard library only.
"""

from __future__ import annotations

import math
import traceback
from typing import Any

from dagserve._errors import AppClosedError, DagserveError, InputValidationError, NodeError, OverloadedError
from dagserve._errors import HTTPError as NodeHTTPError

__all__ = ["HTTPError", "client_gone", "error_body", "error_from_exception", "error_schema", "retry_after"]

# Names for statuses that reach us without a dagserve error (Starlette's own 404/405 ...).
_STATUS_TYPES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "UnprocessableEntity",
    431: "RequestHeadTooLarge",
    500: "InternalError",
    501: "NotImplemented",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


class HTTPError(NodeHTTPError):
    """An error the ingress itself answers (bad route, auth, limits); carries its status and headers.

    A subclass of the public :class:`dagserve.HTTPError` nodes raise, so both answer the same way."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status_code, message, headers=headers)
        self.error_type = error_type or status_type(status_code)
        self.extra = extra or {}


def client_gone(when: str) -> HTTPError:
    """The answer to a client that disconnected (nobody reads it: it is for the log)."""
    return HTTPError(499, f"The client disconnected {when}.", error_type="ClientDisconnected", headers={"connection": "close"})


def status_type(status: int) -> str:
    """The error ``type`` for a bare HTTP status."""
    return _STATUS_TYPES.get(status, "ClientError" if status < 500 else "ServerError")


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def error_body(
    status: int,
    error_type: str,
    message: str,
    *,
    request_id: str | None,
    node: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The error document (a dict ready for JSON)."""
    error: dict[str, Any] = {
        "type": error_type,
        "message": message,
        "status": status,
        "node": node,
        "request_id": request_id,
    }
    if extra:
        error.update(extra)
    return {"error": error}


def error_from_exception(
    exc: BaseException, *, request_id: str | None, debug: bool = False
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` for ``exc``: dagserve errors by their ``status_code``,
    anything else as a 500 that names only the exception's type (details go to the log)."""
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    node: str | None = None
    if isinstance(exc, NodeHTTPError):  # the ingress's own, or a node's (node named)
        status, error_type, message, node = exc.status_code, exc.error_type, str(exc), exc.node
        headers.update(exc.headers)
        extra.update(getattr(exc, "extra", {}))
        if isinstance(exc.detail, (dict, list, int, float)):  # FastAPI allows any JSON as detail
            extra["detail"] = exc.detail
    elif isinstance(exc, DagserveError):
        status = int(getattr(exc, "status_code", 500))
        error_type = getattr(exc, "error_type", None) or type(exc).__name__
        message = str(exc)
        node_attr = getattr(exc, "node", None)
        node = node_attr if isinstance(node_attr, str) else None
        if isinstance(exc, NodeError):
            error_type = exc.error_type  # the original exception's type name
        if isinstance(exc, InputValidationError):
            extra["errors"] = _jsonable_errors(exc.errors)
        if isinstance(exc, OverloadedError):
            headers["retry-after"] = retry_after(exc.retry_after_s)
        elif isinstance(exc, AppClosedError) or status == 503:
            headers["retry-after"] = "5"
    else:
        status, error_type = 500, "InternalError"
        message = f"The server failed while handling the request ({type(exc).__name__}); see the server log."
    if debug:
        extra["traceback"] = "".join(traceback.format_exception(exc))
    body = error_body(status, error_type, message, request_id=request_id, node=node, extra=extra)
    return status, body, headers


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # pydantic puts arbitrary objects in ``ctx``/``input``; keep the documented, JSON-safe fields.
    out = []
    for e in errors:
        loc = [p if isinstance(p, (int, str)) else str(p) for p in e.get("loc", ())]
        out.append({"loc": loc, "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))})
    return out


def error_schema() -> dict[str, Any]:
    """JSON Schema of the error document (used in the OpenAPI description)."""
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message", "status", "node", "request_id"],
                "properties": {
                    "type": {"type": "string", "description": "The exception type or error kind."},
                    "message": {"type": "string", "description": "What happened, where, and how to fix it."},
                    "status": {"type": "integer", "description": "The HTTP status code, repeated."},
                    "node": {"type": ["string", "null"], "description": "The node to blame, if any."},
                    "request_id": {"type": ["string", "null"], "description": "The x-request-id of the request."},
                    "errors": {
                        "type": "array",
                        "description": "Field errors of a payload that failed the Input schema (422).",
                        "items": {
                            "type": "object",
                            "required": ["loc", "msg", "type"],
                            "properties": {
                                "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                                "msg": {"type": "string"},
                                "type": {"type": "string"},
                            },
                        },
                    },
                    "traceback": {"type": "string", "description": "Only in debug mode."},
                },
            }
        },
    }
