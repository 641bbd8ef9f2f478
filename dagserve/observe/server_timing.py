"""A request's path through the graph: which nodes ran, for how long, which branches it took.

Two cheap views of one :class:`~dagserve.RequestContext`:

* the ``dagserve.trace`` logger gets one DEBUG line per request (``trace_observer``, an App
  observer), with the request id, the outcome and every node's time;
* on request (the client sends ``x-dagserve-trace: 1``) the ingress returns the same timings in a
  standard ``Server-Timing`` response header (``trace_headers``), which browsers' developer tools
  and ``curl -i`` show as they are.

Also home of :func:`outcome_of`, the one mapping from a request's error to the ``outcome`` label
that metrics and logs share. Standard library only: importing it costs nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dagserve._errors import OUTCOMES, outcome_of
from dagserve.runtime.composite_steps import SKIPPED_HEADER

if TYPE_CHECKING:
    from dagserve.app import App
    from dagserve.runtime.executor import RequestContext

__all__ = [
    "OUTCOMES",
    "TRACE_HEADER",
    "failing_node",
    "format_trace",
    "outcome_of",
    "response_headers",
    "server_timing",
    "trace_headers",
    "trace_observer",
    "trace_requested",
]

logger = logging.getLogger("dagserve.trace")

#: Request header asking for the per-node timings in the response (any of 1/true/yes/on).
TRACE_HEADER = "x-dagserve-trace"

# RFC 9110 token characters; Server-Timing metric names must be tokens.
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]")


def failing_node(error: BaseException | None) -> str | None:
    """The step or node name an error blames (``NodeError.node`` and friends), if any."""
    node = getattr(error, "node", None) if error is not None else None
    return node if isinstance(node, str) else None


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}".rstrip("0").rstrip(".") or "0"


def format_trace(graph: str, ctx: RequestContext, error: BaseException | None, seconds: float) -> str:
    """One line describing a request's path, e.g.
    ``request 9c95e3… graph=reviews outcome=ok 1.2 ms: clean 0.17 ms, Sentiment 0.5 ms; route switch=default``.
    Nodes appear in the order they finished."""
    parts = [f"request {ctx.request_id} graph={graph} outcome={outcome_of(error)} {_ms(seconds)} ms"]
    nodes = ", ".join(f"{name} {_ms(s)} ms" for name, s in ctx.shown_timings().items())
    line = f"{parts[0]}: {nodes}" if nodes else parts[0]
    if ctx.route:
        line += "; route " + ", ".join(f"{k}={v}" for k, v in ctx.route.items())
    if ctx.skipped:
        line += "; skipped " + ", ".join(f"{k} ({type(v).__name__})" for k, v in ctx.skipped.items())
    culprit = failing_node(error)
    if culprit is not None:
        line += f"; failed at {culprit}"
    return line


def trace_observer(app: App, ctx: RequestContext, error: BaseException | None, seconds: float) -> None:
    """App observer: log each request's path to ``dagserve.trace`` at DEBUG (free when disabled).

    Install with ``app.observers.append(trace_observer)``; turn on with
    ``logging.getLogger("dagserve.trace").setLevel(logging.DEBUG)`` (``dagserve run --log-level debug``).
    """
    if not logger.isEnabledFor(logging.DEBUG):
        return
    logger.debug(
        "%s",
        format_trace(app.name, ctx, error, seconds),
        extra={"request_id": ctx.request_id, "graph": app.name, "timings": dict(ctx.shown_timings()), "route": dict(ctx.route)},
    )


def server_timing(ctx: RequestContext, seconds: float | None = None) -> str:
    """``Server-Timing`` header value: one ``name;dur=<ms>`` entry per node that ran, then ``total``.

    Names outside the header's token alphabet are replaced by ``_`` and the real name is kept in
    ``desc``.
    """
    entries = []
    for name, s in ctx.shown_timings().items():
        token = _NOT_TOKEN.sub("_", name)
        desc = "" if token == name else ';desc="' + _header_safe(name).replace("\\", "\\\\").replace('"', '\\"') + '"'
        entries.append(f"{token};dur={_ms(s)}{desc}")
    if seconds is not None:
        entries.append(f"total;dur={_ms(seconds)}")
    return ", ".join(entries)


def trace_requested(headers: Mapping[str, str]) -> bool:
    """Did the client ask for timings (``x-dagserve-trace: 1``)? ``headers`` is case-insensitive
    (Starlette's ``request.headers``) or has lower-case keys."""
    value = headers.get(TRACE_HEADER)
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def trace_headers(ctx: RequestContext, seconds: float | None = None) -> dict[str, str]:
    """Response headers for a traced request: ``server-timing`` (per-node and total milliseconds),
    ``x-dagserve-request-id`` and, when a switch or split chose a branch, ``x-dagserve-route``
    (``name=branch`` pairs)."""
    headers = {"server-timing": server_timing(ctx, seconds), "x-dagserve-request-id": ctx.request_id}
    if ctx.route:
        headers["x-dagserve-route"] = ", ".join(f"{k}={_header_safe(v)}" for k, v in ctx.route.items())
    return headers


def _header_safe(text: Any) -> str:
    # Switch case labels are repr() of user values; keep the header printable ASCII on one line.
    return str(text).encode("ascii", "backslashreplace").decode().replace("\r", " ").replace("\n", " ")


def response_headers(ctx: RequestContext | None, traced: bool, seconds: float) -> dict[str, str] | None:
    """Headers of a graph's answer: ``x-dagserve-skipped`` (the nodes an ``optional`` skipped,
    comma-separated) whenever there are any, and :func:`trace_headers` when ``traced``."""
    if ctx is None:
        return None
    headers = trace_headers(ctx, seconds) if traced else {}
    if ctx.skipped:
        headers[SKIPPED_HEADER] = ", ".join(_header_safe(name) for name in ctx.skipped)
    return headers or None
