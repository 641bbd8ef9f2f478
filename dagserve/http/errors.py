"""The one error shape every non-2xx answer of the ingress uses, and how errors map onto it.

::

    {"error": {"type": "ValueError", "message": "Node 'clean' raised ValueError: ...",
               "status": 500, "node": "clean", "request_id": "9c95e3..."}}

``type`` is the original exception's type name for a failing node (:class:`~dagserve.NodeError`),
the dagserve error's class name for other dagserve errors, and a fixed name for HTTP-level ones
(``InvalidJSON``, ``NotFound`` ...). ``node`` is ``null`` unless a node is to blame. A 422 adds
``errors`` (one entry per field: ``loc``, ``msg``, ``type``); debug mode adds ``traceback``.

The Open Inference Protocol's routes (``/v2/...``) answer in that protocol's shape instead,
``{"error": "<message>"}``, and the OpenAI-compatible routes (``/v1/...``) in OpenAI's,
``{"error": {"message", "type", "param", "code"}}``: :func:`error_shape` says which shape a
path takes, and every error answer is built in it (:func:`error_body`, :func:`error_from_exception`).
Standard library only.
"""

from __future__ import annotations

import math
import traceback
from typing import Any

from dagserve._errors import (
    AppClosedError,
    DagserveError,
    InputValidationError,
    ModelNotFoundError,
    NodeError,
    OverloadedError,
)
from dagserve._errors import HTTPError as NodeHTTPError
from dagserve.openai.protocol import error_document

__all__ = [
    "OPENAI_PREFIX",
    "HTTPError",
    "client_gone",
    "error_body",
    "error_from_exception",
    "error_schema",
    "error_shape",
    "openai_error",
    "retry_after",
]

#: The error shapes: dagserve's own document, the Open Inference Protocol's ``{"error": "..."}``,
#: or OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
SHAPES = ("dagserve", "oip", "openai")

#: Paths under this prefix are the OpenAI-compatible routes (http/openai_routes.py): their errors
#: take OpenAI's shape.
OPENAI_PREFIX = "/v1/"

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


def error_shape(path: str, root_path: str = "") -> str:
    """The error shape of the route at ``path`` (below the mount point ``root_path``): ``"oip"``
    under ``/v2``, ``"openai"`` under ``/v1/``, else ``"dagserve"``."""
    local = path[len(root_path) :] if root_path and path.startswith(root_path) else path
    if local == "/v2" or local.startswith("/v2/"):
        return "oip"
    return "openai" if local.startswith(OPENAI_PREFIX) else "dagserve"


def error_body(
    status: int,
    error_type: str,
    message: str,
    *,
    request_id: str | None,
    node: str | None = None,
    extra: dict[str, Any] | None = None,
    shape: str = "dagserve",
    exc: BaseException | None = None,
) -> dict[str, Any]:
    """The error document (a dict ready for JSON), in ``shape`` (see :data:`SHAPES`); ``exc``
    (the error) gives OpenAI's ``param`` and ``code``."""
    if shape == "oip":
        return {"error": message}
    if shape == "openai":
        return openai_error(status, {"error": {"message": message}}, exc)
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
    exc: BaseException, *, request_id: str | None, debug: bool = False, shape: str = "dagserve"
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
    if debug:  # a node's own traceback when it has one (from a Ray replica too), else the ingress's
        node_tb = getattr(exc, "traceback", None)
        extra["traceback"] = node_tb if isinstance(node_tb, str) and node_tb else "".join(traceback.format_exception(exc))
    body = error_body(status, error_type, message, request_id=request_id, node=node, extra=extra, shape=shape, exc=exc)
    return status, body, headers


def openai_error(status: int, body: dict[str, Any], exc: BaseException | None = None) -> dict[str, Any]:
    """The error document ``body`` (from :func:`error_body`) in OpenAI's shape; ``param`` and
    ``code`` from ``exc`` when it has them (a :class:`~dagserve.ParameterError`)."""
    param = getattr(exc, "param", None)
    code = getattr(exc, "code", None)
    if isinstance(exc, ModelNotFoundError):
        code = "model_not_found"
    elif isinstance(exc, InputValidationError) and exc.errors:
        param = ".".join(str(p) for p in exc.errors[0].get("loc", ()))  # the graph's own schema refused it
    return error_document(status, body["error"]["message"], param=param if isinstance(param, str) else None,
                          code=code if isinstance(code, str) else None)


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
