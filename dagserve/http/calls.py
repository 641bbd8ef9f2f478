"""What a door's answer gets from the ingress: :class:`Call`, one request past the ingress's
checks (token, the door's type check, admission, the body read and decoded; http/ingress.py
``Ingress.run_request``), and the timing headers a client may ask for."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagserve.http.middleware import SCOPE_TRACE
from dagserve.observe.server_timing import TRACE_HEADER, response_headers, trace_requested
from dagserve.runtime.executor import RequestContext
from dagserve.runtime.multiplex import MODEL_ID_HEADER

if TYPE_CHECKING:
    from starlette.requests import Request

    from dagserve.http.doors import Door

__all__ = ["Call", "timing_headers"]


@dataclass(eq=False, slots=True)
class Call:
    """One request through a door, past the ingress's checks: what the door's answer needs."""

    request: Request
    request_id: str
    payload: Any
    accept: str | None
    trace: str | None  # the x-dagserve-trace header
    start: float  # time.perf_counter() when the request came
    door: Door  # the door it came in by (http/doors.py)
    state: Any = None  # what the door's decode gave its encode
    size: int = 0  # the body's bytes
    ctx: RequestContext | None = None
    held: bool = False  # a streaming answer holds the admission slot until it ends

    def context(self, protocol: str) -> RequestContext:
        """The request's context for the graph (``protocol``: the door, for metrics and records);
        ``x-dagserve-model-id`` gives a multiplexed node's id when the payload has none."""
        trace = self.request.scope.get(SCOPE_TRACE)
        model_id = self.request.headers.get(MODEL_ID_HEADER)
        self.ctx = RequestContext(request_id=self.request_id, trace=trace, protocol=protocol, model_id=model_id)
        return self.ctx

    def headers(self) -> dict[str, str] | None:
        """The answer's timing headers, if the client asked for them (x-dagserve-trace)."""
        return timing_headers(self.trace, self.ctx, self.start)


def timing_headers(value: str | None, ctx: RequestContext | None, start: float) -> dict[str, str] | None:
    """Timing headers when the client asked for them (``value``: its x-dagserve-trace header),
    and the nodes an ``optional`` skipped."""
    if ctx is None or (value is None and not ctx.skipped):
        return None
    traced = value is not None and trace_requested({TRACE_HEADER: value})
    return response_headers(ctx, traced, time.perf_counter() - start)
