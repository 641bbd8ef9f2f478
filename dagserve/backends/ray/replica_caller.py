"""Handles on Ray (issue 18, item 1): how a replica calls the deployments it holds.

A replica turns the :class:`~dagserve.compiler.handle_refs.HandleRef` in its constructor arguments,
and in the arguments of a call whose header says it carries some, into
:class:`~dagserve.runtime.handles.Handle` objects calling through a :class:`ReplicaCaller`: each
call goes to the callee's replicas (its own deployment: replicas, queue, batching) over the
transport :func:`~dagserve.backends.ray.transports.choose_transport` picks, the replica's direct
pools where they apply, else Serve's ``DeploymentHandle``, as the ingress's calls go. What
travels with the call, in its :class:`~dagserve.backends.ray.header.CallHeader`'s ``extras``: the
request's time left (``deadline_s``; each process turns it back into a deadline of its own clock)
and whether the arguments hold handle refs; the request id and trace as for every call.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import TYPE_CHECKING, Any

from dagserve._errors import outcome_of
from dagserve.compiler.handle_refs import HandleRef
from dagserve.runtime.handles import (
    Handle,
    bounded,
    current_request,
    enter_request,
    holds_handles,
    resolve_handles,
    time_left,
)
from dagserve.backends.ray.header import CallHeader
from dagserve.backends.ray.transports import ServeTransport, Transport, choose_transport
from dagserve.runtime.call_stats import CallStats
from dagserve.runtime.request_id import current_request_id, new_request_id
from dagserve.runtime.tracing import current_traceparent

if TYPE_CHECKING:
    from dagserve.backends.ray.direct_routing import DirectRouting
    from dagserve.compiler.plan import DeploymentSpec, Step
    from dagserve.runtime.executor import RequestContext

__all__ = ["CallExtras", "ReplicaCaller", "enter_call"]


class CallExtras:
    """The header's ``extras`` for calls to a deployment holding handles, or passing some
    (whether they do is worked out once per step, not per call): whether the arguments hold
    handle refs, the request's time left, and ``timeouts``, the ``timeout_s`` in force of every
    deployment reached through handles (``app.update`` may have changed one since the holder's
    replicas started; they learn it from the calls they get, and pass it on)."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Step, DeploymentSpec, bool, bool]] = {}
        #: Deployment reached through handles -> its timeout_s in force (set by the backend).
        self.timeouts: dict[str, float | None] = {}

    def __call__(self, step: Step, spec: DeploymentSpec, ctx: RequestContext) -> dict[str, Any] | None:
        seen = self._seen.get(id(step))
        if seen is None or seen[0] is not step or seen[1] is not spec:
            args = holds_handles((step.args, dict(step.kwargs)))
            holder = holds_handles((spec.init_args, dict(spec.init_kwargs)))
            seen = self._seen[id(step)] = (step, spec, args, holder)
        if not (seen[2] or seen[3]):
            return None
        left = None if ctx.deadline is None else ctx.deadline - time.monotonic()
        return {"handles": seen[2], "deadline_s": left, "timeouts": self.timeouts, "graph": ctx.graph}


def enter_call(
    header: CallHeader, args: tuple[Any, ...], kwargs: dict[str, Any], caller: ReplicaCaller
) -> tuple[tuple[Any, ...], dict[str, Any], contextvars.Token[Any] | None]:
    """In a replica, for one call: its handle refs made handles, its request made current (so
    handle calls from the node's code carry its id and deadline); the token undoes the latter."""
    extras = header.extras
    if not extras:
        return args, kwargs, None
    timeouts = extras.get("timeouts")
    if timeouts:
        caller.learn(timeouts)
    if extras.get("handles"):
        args, kwargs = resolve_handles((args, kwargs), caller.make)
    from dagserve.runtime.executor import RequestContext

    left = extras.get("deadline_s")
    graph = extras.get("graph")
    ctx = RequestContext(
        request_id=header.request_id,
        deadline=None if left is None else time.monotonic() + left,
        graph=graph if isinstance(graph, str) else None,
    )
    return args, kwargs, enter_request(ctx)


class ReplicaCaller:
    """A replica's handle calls, to the callee's replicas over the transport
    :func:`~dagserve.backends.ray.transports.choose_transport` picks, as for every other call:
    the replica's own direct pools (``peers``) where they apply, else Serve's ``DeploymentHandle``.

    Each call's time and outcome go into :attr:`stats` under the graph of the request it serves
    (the replica sends them with its ``STATS``: ``Backend.handle_calls``, observe/metrics.py)."""

    def __init__(self, peers: DirectRouting | None = None) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._app: str | None = None
        self._peers = peers
        self._serve: dict[str, ServeTransport] = {}
        self._timeouts: dict[str, float | None] = {}
        self._bounds: dict[str, tuple[int, int | None] | None] = {}
        #: The calls made, by (graph, callee, outcome).
        self.stats = CallStats()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The replica's event loop: sync node code in worker threads sends its calls there."""
        self._loop = loop

    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def learn(self, timeouts: dict[str, float | None]) -> None:
        """The ``timeout_s`` in force of the deployments reached through handles, as a call
        brought them (the plan in force where it came from)."""
        if timeouts != self._timeouts:
            self._timeouts = {**self._timeouts, **timeouts}

    def make(self, ref: HandleRef) -> Handle:
        self._timeouts.setdefault(ref.deployment, ref.timeout_s)
        self._bounds.setdefault(ref.deployment, ref.bounds)
        return Handle(ref.deployment, self)

    def _app_name(self) -> str:
        if self._app is None:
            from ray import serve

            self._app = serve.get_replica_context().app_name
        return self._app

    def _serve_transport(self, deployment: str) -> ServeTransport:
        transport = self._serve.get(deployment)
        if transport is None:
            from ray import serve

            handle = serve.get_deployment_handle(deployment, self._app_name())
            transport = self._serve[deployment] = ServeTransport(handle)
        return transport

    def transport(self, deployment: str) -> Transport:
        """The transport a handle call to ``deployment`` takes now."""
        bounds = self._bounds.get(deployment)
        return choose_transport(
            self._peers, deployment, self._app_name(), bounds, lambda: self._serve_transport(deployment)
        )

    async def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = deployment if method == "__call__" else f"{deployment}.{method}"
        ctx = current_request()
        request_id = ctx.request_id if ctx is not None else (current_request_id() or new_request_id())
        left = time_left(ctx, name)
        graph = ctx.graph if ctx is not None else None
        extras = {"handles": holds_handles((args, kwargs)), "deadline_s": left, "timeouts": self._timeouts, "graph": graph}
        header = CallHeader(method, name, request_id, current_traceparent(), extras)
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            response = self.transport(deployment).call(header, args, kwargs)
            timeout = self._timeouts.get(deployment)
            return await bounded(response, name, request_id, left, timeout, unwrap=_cause, cancel=response.cancel)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.stats.record(graph or "", name, outcome_of(error), time.perf_counter() - start)


def _cause(exc: BaseException) -> BaseException:
    """The callee's own exception inside Ray's ``RayTaskError``."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
