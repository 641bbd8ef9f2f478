"""A job's failure as JSON, and back: the store keeps errors so that any process can read them.

``error_record(exc)`` keeps the class (the nearest one of :mod:`dagserve._errors`), the message
and the fields that class carries (``node``, ``error_type``, ``status_code``, ``errors``,
``detail``, ``retry_after_s``); ``rebuild_error(record)`` makes the same typed error again, which
``job.result()`` raises and the HTTP layer turns into its usual error shape. No pickle: a store
shared by several servers is read by all of them.
"""

from __future__ import annotations

import json
from typing import Any

from dagserve import _errors
from dagserve._errors import (
    DagserveError,
    HTTPError,
    InputValidationError,
    NodeError,
    OverloadedError,
    RequestTimeoutError,
)

__all__ = ["error_record", "rebuild_error"]

_FIELDS = ("node", "error_type", "status_code", "errors", "detail", "retry_after_s", "job_id")


def error_record(exc: BaseException) -> dict[str, Any]:
    """``exc`` as a JSON-ready dict (anything not a dagserve error names only its type: details go
    to the server's log, as the HTTP ingress does)."""
    if not isinstance(exc, DagserveError):
        return {
            "class": "DagserveError",
            "message": f"The server failed while running the job ({type(exc).__name__}); see the server log.",
            "error_type": "InternalError",
            "status_code": 500,
        }
    cls = next(c for c in type(exc).__mro__ if c.__name__ in _errors.__all__ and c.__module__ == _errors.__name__)
    record: dict[str, Any] = {"class": cls.__name__, "message": str(exc)}
    for name in _FIELDS:
        value = getattr(exc, name, None)
        if value is not None and _jsonable(value):
            record[name] = value
        elif value is not None:
            record[name] = repr(value)
    record.setdefault("status_code", getattr(exc, "status_code", 500))
    record.setdefault("error_type", getattr(exc, "error_type", None) or type(exc).__name__)
    return record


def rebuild_error(record: dict[str, Any]) -> DagserveError:
    """The typed error ``record`` describes (a :class:`~dagserve.DagserveError` for an unknown class)."""
    cls = getattr(_errors, str(record.get("class")), DagserveError)
    if not (isinstance(cls, type) and issubclass(cls, DagserveError)):
        cls = DagserveError
    message = str(record.get("message", ""))
    node = record.get("node")
    exc: DagserveError
    if issubclass(cls, NodeError):
        exc = cls(message, node=str(node), error_type=str(record.get("error_type", "Exception")))
    elif issubclass(cls, HTTPError):
        exc = cls(int(record.get("status_code", 500)), record.get("detail", message))
    elif issubclass(cls, RequestTimeoutError):
        exc = cls(message, node=node)
    elif issubclass(cls, OverloadedError):
        exc = cls(message, node=node, retry_after_s=float(record.get("retry_after_s", 1.0)))
    elif issubclass(cls, InputValidationError):
        exc = cls(message, list(record.get("errors") or []))
    else:
        exc = cls(message)
    for name in _FIELDS:
        if name in record and name != "status_code":
            setattr(exc, name, record[name])
    if "status_code" in record and record["status_code"] != getattr(cls, "status_code", None):
        exc.status_code = int(record["status_code"])
    return exc


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
