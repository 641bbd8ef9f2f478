"""Handles on Ray (issue 18, item 1): how a replica calls the deployments it holds.

A replica turns the :class:`~dagserve.compiler.handles.HandleRef` in its constructor arguments,
and in the arguments of a call whose header says it carries some, into
:class:`~dagserve.runtime.handles.Handle` objects calling through a :class:`ServeCaller`: Serve's
``DeploymentHandle`` of the callee in the same application, so the callee is its own deployment
(its replicas, queue, batching) and a call from inside a replica works as Serve intends. What
travels with the call, in the header's fifth element, after the traceparent (:func:`call_extras`): the request's time
left (``deadline_s``; each process turns it back into a deadline of its own clock) and whether the
arguments hold handle refs; the request id is the header's third element, as for every call.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import TYPE_CHECKING, Any

from dagserve.compiler.handles import HandleRef
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
from dagserve.runtime.request_id import current_request_id, new_request_id
from dagserve.runtime.tracing import current_traceparent

if TYPE_CHECKING:
    from dagserve.compiler.plan import DeploymentSpec, Step

__all__ = ["CallExtras", "ServeCaller", "enter_call"]


class CallExtras:
    """The header's fifth element for calls to a deployment holding handles, or passing some
    (cached per step: worked out once, not per call)."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Step, DeploymentSpec, bool, bool]] = {}

    def __call__(self, step: Step, spec: DeploymentSpec, deadline: float | None) -> dict[str, Any] | None:
        seen = self._seen.get(id(step))
        if seen is None or seen[0] is not step or seen[1] is not spec:
            args = holds_handles((step.args, dict(step.kwargs)))
            holder = holds_handles((spec.init_args, dict(spec.init_kwargs)))
            seen = self._seen[id(step)] = (step, spec, args, holder)
        if not (seen[2] or seen[3]):
            return None
        left = None if deadline is None else deadline - time.monotonic()
        return {"handles": seen[2], "deadline_s": left}


def enter_call(
    header: CallHeader, args: tuple[Any, ...], kwargs: dict[str, Any], caller: ServeCaller
) -> tuple[tuple[Any, ...], dict[str, Any], contextvars.Token[Any] | None]:
    """In a replica, for one call: its handle refs made handles, its request made current (so
    handle calls from the node's code carry its id and deadline); the token undoes the latter."""
    extras = header.extras
    if not extras:
        return args, kwargs, None
    if extras.get("handles"):
        args, kwargs = resolve_handles((args, kwargs), caller.make)
    from dagserve.runtime.executor import RequestContext

    left = extras.get("deadline_s")
    ctx = RequestContext(request_id=header.request_id, deadline=None if left is None else time.monotonic() + left)
    return args, kwargs, enter_request(ctx)


class ServeCaller:
    """A replica's handle calls: through Serve's ``DeploymentHandle`` to the callee's replicas."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._app: str | None = None
        self._handles: dict[str, Any] = {}
        self._timeouts: dict[str, float | None] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The replica's event loop: sync node code in worker threads sends its calls there."""
        self._loop = loop

    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def make(self, ref: HandleRef) -> Handle:
        self._timeouts.setdefault(ref.deployment, ref.timeout_s)
        return Handle(ref.deployment, self)

    def _handle(self, deployment: str) -> Any:
        h = self._handles.get(deployment)
        if h is None:
            from ray import serve

            if self._app is None:
                self._app = serve.get_replica_context().app_name
            h = self._handles[deployment] = serve.get_deployment_handle(deployment, self._app)
        return h

    async def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = deployment if method == "__call__" else f"{deployment}.{method}"
        ctx = current_request()
        request_id = ctx.request_id if ctx is not None else (current_request_id() or new_request_id())
        left = time_left(ctx, name)
        extras = {"handles": holds_handles((args, kwargs)), "deadline_s": left}
        header = CallHeader(method, name, request_id, current_traceparent(), extras)
        response = self._handle(deployment).remote(header, *args, **kwargs)
        timeout = self._timeouts.get(deployment)
        return await bounded(response, name, request_id, left, timeout, unwrap=_cause, cancel=response.cancel)


def _cause(exc: BaseException) -> BaseException:
    """The callee's own exception inside Ray's ``RayTaskError``."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
