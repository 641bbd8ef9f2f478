"""Log records with the request's ids, as text or JSON, and an access record per request.

* :class:`TraceIdFilter` adds ``request_id`` and ``trace_id`` (W3C, 32 hex) to every record
  (``-`` outside a request), in the ingress and, on Ray, in the replicas' node code;
* :class:`JsonFormatter` writes a record as one JSON object per line (``dagserve run
  --log-format json``);
* :class:`TextFormatter` writes a record as a text line, followed by the failing node's traceback
  when the record carries one (:func:`log_failure`);
* :func:`log_failure` logs a failed request once, with the node's traceback (its own code's
  frames; on Ray carried from the replica by the error) as the record's ``traceback`` field;
* :func:`access_observer`, an App observer, logs one record per request on the
  ``dagserve.access`` logger at INFO: request id, trace id, graph, status, outcome, duration and
  per-node times (free when that logger is not enabled for INFO).

Standard library only.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from dagserve.observe.server_timing import failing_node, outcome_of
from dagserve.runtime.request_id import RequestIdFilter
from dagserve.runtime.tracing import current_trace_id

if TYPE_CHECKING:
    from dagserve.app import App
    from dagserve.runtime.executor import RequestContext

__all__ = [
    "ACCESS_LOGGER",
    "LOG_FORMATS",
    "TEXT_FORMAT",
    "JsonFormatter",
    "TextFormatter",
    "TraceIdFilter",
    "access_observer",
    "log_failure",
    "status_of",
]

#: The logger of the per-request records.
ACCESS_LOGGER = "dagserve.access"
#: The values of ``--log-format``.
LOG_FORMATS = ("text", "json")

access_log = logging.getLogger(ACCESS_LOGGER)

#: ``dagserve run``'s text log lines.
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"

# Fields of a record that JsonFormatter copies when present (set with ``extra=``).
_FIELDS = (
    "graph", "protocol", "status", "outcome", "duration_ms", "nodes", "route", "failed_node", "node", "traceback", "url",
)


class TraceIdFilter(RequestIdFilter):
    """:class:`~dagserve.RequestIdFilter` plus ``record.trace_id``: the current request's W3C
    trace id, or ``default``. Use ``%(trace_id)s`` in a format."""

    def filter(self, record: logging.LogRecord) -> bool:
        super().filter(record)
        if not hasattr(record, "trace_id"):
            record.trace_id = current_trace_id() or self.default
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    ``request_id`` and ``trace_id`` (with :class:`TraceIdFilter`), the access fields when the
    record has them, and ``exception`` (the traceback text) when it carries one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id"):
            value = getattr(record, key, None)
            if value is not None and value != "-":
                out[key] = value
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT` lines (or ``fmt``), each followed by the ``traceback`` its record
    carries (a failed node's, see :func:`log_failure`)."""

    def __init__(self, fmt: str | None = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tb = getattr(record, "traceback", None)
        return f"{text}\n{tb.rstrip()}" if isinstance(tb, str) and tb else text


def log_failure(logger: logging.Logger, error: BaseException, request_id: str, status: int, trace: Any = None) -> None:
    """Log the failure of request ``request_id`` once: the error's message and, for a node's
    failure, the node and its traceback (``traceback``: text; a field of the JSON record), with
    the request's ``trace_id`` when ``trace`` (its W3C trace context) is known. A node's failure
    is an ERROR (its code has a bug to find), any other failure a WARNING."""
    extra: dict[str, Any] = {"request_id": request_id}
    trace_id = getattr(trace, "trace_id", None)
    if trace_id:
        extra["trace_id"] = trace_id
    tb = getattr(error, "traceback", None)
    node = getattr(error, "node", None)
    if node is not None:
        extra["node"] = node
    if isinstance(tb, str) and tb:
        extra["traceback"] = tb
        logger.error("request %s failed with %s: %s", request_id, status, error, extra=extra)
    else:
        logger.warning("request %s failed with %s: %s", request_id, status, error, extra=extra)


def status_of(error: BaseException | None) -> int:
    """The HTTP status a request's outcome gets (200; the error's ``status_code``; 499 cancelled)."""
    if error is None:
        return 200
    if outcome_of(error) == "cancelled":
        return 499
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else 500


def access_observer(app: App, ctx: RequestContext, error: BaseException | None, seconds: float) -> None:
    """App observer: one INFO record per request on ``dagserve.access`` (``app.observers.append``)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    status = status_of(error)
    outcome = outcome_of(error)
    ms = round(seconds * 1000, 3)
    extra: dict[str, Any] = {
        "request_id": ctx.request_id,
        "graph": app.name,
        "protocol": ctx.protocol,
        "status": status,
        "outcome": outcome,
        "duration_ms": ms,
        "nodes": {name: round(s * 1000, 3) for name, s in ctx.shown_timings().items()},
    }
    if ctx.trace is not None:
        extra["trace_id"] = ctx.trace.trace_id
    if ctx.route:
        extra["route"] = dict(ctx.route)
    culprit = failing_node(error)
    if culprit is not None:
        extra["failed_node"] = culprit
    access_log.info("request %s graph=%s %d %s %.3f ms", ctx.request_id, app.name, status, outcome, ms, extra=extra)
