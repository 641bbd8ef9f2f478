"""Handles: a node calling another deployment from its own code (issue 18, item 1).

A model instance given to another model's constructor (directly or inside lists and dicts), or
to a node call as an argument, is compiled to a :class:`~dagserve.compiler.handle_refs.HandleRef`
(``compiler/handle_refs.py``); where the node runs, the backend turns each ref into a
:class:`Handle`. The callee stays its own deployment: a handle call goes through the backend's
usual call path (replica slots and queue, batching, ``timeout_s``), with the request id and the
request's deadline of the caller.

::

    result = await handle.acall(x)             # async code
    result = await handle.predict.acall(x)     # another method
    result = handle.call(x)                    # sync code (runs in a worker thread)
    response = handle.remote(x)                # Ray Serve spelling: await it, or .result()

Sync node code runs in a worker thread: ``handle.call`` hops onto the event loop the calls run
on and waits for the answer there, so the loop never blocks. Calling it *on* that loop's thread
(sync code run by the loop itself) would deadlock: it raises :class:`HandleError` instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from dagserve._errors import DagserveError, NodeError, RequestTimeoutError, outcome_of
from dagserve.compiler.handle_refs import HandleRef
from dagserve.compiler.plan import Step
from dagserve.graph.leaves import any_leaf, map_leaves
from dagserve.runtime.call_stats import CallStats
from dagserve.runtime.request_id import current_request_id, reset_request_id, set_request_id

if TYPE_CHECKING:
    from dagserve.compiler.plan import DeploymentSpec
    from dagserve.runtime.executor import RequestContext, Runner

__all__ = [
    "Handle",
    "HandleCaller",
    "HandleError",
    "HandleResponse",
    "InProcessHandles",
    "RunnerCaller",
    "bounded",
    "current_request",
    "enter_request",
    "holds_handles",
    "leave_request",
    "resolve_handles",
    "time_left",
]

# The request being served in this context (its id, deadline and timings): set by the App for a
# request, and by a replica for each call it serves, so handle calls carry them on.
_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("dagserve_request", default=None)


class HandleError(DagserveError):
    """A handle was used where it cannot work (sync ``call`` on the event loop's own thread)."""


def enter_request(ctx: RequestContext) -> contextvars.Token[RequestContext | None]:
    """Make ``ctx`` the current request (handle calls made from here carry its id and deadline)."""
    return _request.set(ctx)


def leave_request(token: contextvars.Token[RequestContext | None]) -> None:
    _request.reset(token)


def current_request() -> RequestContext | None:
    return _request.get()


class HandleCaller(Protocol):
    """How a backend performs a handle call, on the event loop :meth:`loop` returns."""

    def loop(self) -> asyncio.AbstractEventLoop | None: ...

    def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Awaitable[Any]: ...


class Handle:
    """A deployment another node holds: call it with ``acall`` / ``call`` / ``remote``; reach
    another method as an attribute (``handle.predict.acall(x)``)."""

    __slots__ = ("_caller", "_method", "deployment")

    def __init__(self, deployment: str, caller: HandleCaller, method: str = "__call__") -> None:
        self.deployment = deployment
        self._caller = caller
        self._method = method

    def __getattr__(self, method: str) -> Handle:
        if method.startswith("_"):
            raise AttributeError(method)
        return Handle(self.deployment, self._caller, method)

    @property
    def _label(self) -> str:
        return self.deployment if self._method == "__call__" else f"{self.deployment}.{self._method}"

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """Call the deployment from async code and return its result."""
        loop = self._caller.loop()
        current = asyncio.get_running_loop()
        if loop is None or loop is current:
            return await self._caller.call(self.deployment, self._method, args, kwargs)
        return await asyncio.wrap_future(self._submit(loop, args, kwargs))

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Call the deployment from sync code (a worker thread) and wait for its result."""
        return self._thread_future(args, kwargs).result()

    def remote(self, *args: Any, **kwargs: Any) -> HandleResponse:
        """Ray Serve's spelling: a response to ``await`` (async code) or ``.result()`` (sync code)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return HandleResponse(self._thread_future(args, kwargs))
        return HandleResponse(asyncio.ensure_future(self.acall(*args, **kwargs)))

    def _thread_future(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> concurrent.futures.Future[Any]:
        loop = self._caller.loop()
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        if on_loop:
            raise HandleError(
                f"handle {self._label}.call() blocks, and this code runs on an event loop's thread, which "
                "the call needs: it would never finish. In async code use `await handle.acall(...)`; "
                "plain `def` node methods run in a worker thread, where `.call()` works."
            )
        if loop is None or not loop.is_running():
            raise HandleError(
                f"handle {self._label} has no running event loop to call on: call it while the App serves a request."
            )
        return self._submit(loop, args, kwargs)

    def _submit(self, loop: asyncio.AbstractEventLoop, args: tuple[Any, ...], kwargs: dict[str, Any]) -> concurrent.futures.Future[Any]:
        """Run the call on ``loop`` with this thread's request (id, deadline) carried along."""
        request, request_id = _request.get(), current_request_id()

        async def run() -> Any:
            token, id_token = _request.set(request), set_request_id(request_id)
            try:
                return await self._caller.call(self.deployment, self._method, args, kwargs)
            finally:
                reset_request_id(id_token)
                _request.reset(token)

        return asyncio.run_coroutine_threadsafe(run(), loop)

    def __reduce__(self) -> Any:
        # Pickled (sent to another process), a handle is its ref: the receiver makes its own.
        return (HandleRef, (self.deployment,))

    def __repr__(self) -> str:
        return f"<dagserve handle {self._label!r}>"


class HandleResponse:
    """What ``handle.remote(...)`` returns: awaitable in async code, ``.result()`` in sync code."""

    __slots__ = ("_future",)

    def __init__(self, future: asyncio.Future[Any] | concurrent.futures.Future[Any]) -> None:
        self._future = future

    def __await__(self) -> Any:
        if isinstance(self._future, concurrent.futures.Future):
            return asyncio.wrap_future(self._future).__await__()
        return self._future.__await__()

    def result(self, timeout_s: float | None = None) -> Any:
        if isinstance(self._future, asyncio.Future):
            raise HandleError(
                "This handle response was made in async code (on the event loop): `await` it; .result() would block the loop."
            )
        return self._future.result(timeout_s)


def resolve_handles(value: Any, make: Callable[[HandleRef], Any]) -> Any:
    """``value`` with every :class:`HandleRef` (in nested lists, tuples, dicts) replaced by ``make(ref)``."""
    return map_leaves(value, lambda v: make(v) if isinstance(v, HandleRef) else v)


def holds_handles(value: Any) -> bool:
    """Does ``value`` (a template, constructor or call arguments) hold a :class:`HandleRef` or a
    :class:`Handle` (which travels to another process as its ref)?"""
    return any_leaf(value, lambda v: isinstance(v, (HandleRef, Handle)))


class InProcessHandles:
    """Handles for node code running in the App's process (the local backend's nodes, inline
    nodes on Ray): calls go through the App's runner (:class:`RunnerCaller`)."""

    def __init__(self, caller: RunnerCaller) -> None:
        self._caller = caller
        self._holds: dict[int, tuple[Step, bool]] = {}  # id(step) -> (step, its templates hold refs)

    @property
    def stats(self) -> CallStats:
        """The calls made through these handles (:attr:`RunnerCaller.stats`)."""
        return self._caller.stats

    def resolve(self, value: Any) -> Any:
        return resolve_handles(value, lambda ref: Handle(ref.deployment, self._caller))

    def spec(self, spec: DeploymentSpec) -> DeploymentSpec:
        """``spec`` with live handles in its constructor arguments (its replicas call through them)."""
        if spec.kind != "model" or not holds_handles((spec.init_args, dict(spec.init_kwargs))):
            return spec
        from dataclasses import replace

        args, kwargs = self.resolve((spec.init_args, dict(spec.init_kwargs)))
        return replace(spec, init_args=args, init_kwargs=kwargs)

    def holds(self, step: Step) -> bool:
        """Do the call step's templates hold handle refs (worked out once per step)?"""
        seen = self._holds.get(id(step))
        if seen is None or seen[0] is not step:
            seen = self._holds[id(step)] = (step, holds_handles((step.args, dict(step.kwargs))))
        return seen[1]

    def args(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A call step's arguments with live handles for the refs its templates hold."""
        args, kwargs, _ = self.call_args(step, args, kwargs)
        return args, kwargs

    def call_args(
        self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], bool]:
        """:meth:`args`, and whether they hold handles (then sync node code runs on a thread)."""
        if not self.holds(step):
            return args, kwargs, False
        args, kwargs = self.resolve((args, kwargs))
        return args, kwargs, True


class RunnerCaller:
    """Handle calls through an App's :class:`~dagserve.runtime.executor.Runner`, as the executor
    makes call steps: the callee's slots, queue, batching and ``timeout_s`` apply, the call's
    time goes into the request's ``handle_timings`` under the callee's name, and
    errors name it. Each call is also one observation in :attr:`stats` (metrics count calls
    through handles from there, on every backend alike: runtime/call_stats.py)."""

    def __init__(
        self,
        runner: Callable[[], Runner],
        spec: Callable[[str], DeploymentSpec],
        loop: Callable[[], asyncio.AbstractEventLoop | None],
    ) -> None:
        self._runner = runner
        self._spec = spec
        self.loop = loop  # type: ignore[method-assign]
        self._steps: dict[tuple[str, str], Step] = {}
        #: The calls made, by (graph, callee, outcome).
        self.stats = CallStats()

    def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Awaitable[Any]:
        step = self._steps.get((deployment, method))
        if step is None:
            name = deployment if method == "__call__" else f"{deployment}.{method}"
            spec = self._spec(deployment)
            step = Step(-1, name, "call", (), deployment=deployment, method=method, inline=spec.inline)
            self._steps[(deployment, method)] = step
        return self._run(step, args, kwargs)

    async def _run(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from dagserve.runtime.executor import RequestContext

        ctx = _request.get() or RequestContext()
        left = time_left(ctx, step.name)
        token = set_request_id(ctx.request_id)
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            pending = self._runner().call(step, args, kwargs, ctx)
            timeout = self._spec(step.deployment).options.timeout_s  # type: ignore[arg-type]
            return await bounded(pending, step.name, ctx.request_id, left, timeout)
        except BaseException as exc:
            error = exc
            raise
        finally:
            reset_request_id(token)
            elapsed = time.perf_counter() - start
            spent = ctx.handle_timings
            if spent is None:
                spent = ctx.handle_timings = {}
            spent[step.name] = spent.get(step.name, 0.0) + elapsed
            self.stats.record(ctx.graph or "", step.name, outcome_of(error), elapsed)


def time_left(ctx: RequestContext | None, name: str) -> float | None:
    """Seconds the request has left for a handle call of ``name`` (``None``: no deadline)."""
    if ctx is None or ctx.deadline is None:
        return None
    left = ctx.deadline - time.monotonic()
    if left <= 0:
        raise RequestTimeoutError(f"Request {ctx.request_id} ran out of time before its call of {name!r} through a handle.", node=name)
    return left


async def bounded(
    pending: Awaitable[Any],
    name: str,
    request_id: str,
    left: float | None,
    timeout: float | None,
    unwrap: Callable[[BaseException], BaseException] = lambda e: e,
    cancel: Callable[[], Any] | None = None,
) -> Any:
    """A handle call's result within the callee's ``timeout_s`` and the request's time ``left``;
    a failure of the callee is a :class:`~dagserve.NodeError` naming it (``unwrap`` finds the
    callee's own exception in a transport's wrapper; a DagserveError passes as it is)."""
    from dagserve.runtime.executor import node_timeout_error

    limits = [t for t in (left, timeout) if t is not None]
    limit = min(limits) if limits else None
    try:
        async with asyncio.timeout(limit):
            return await pending
    except TimeoutError as exc:
        if cancel is not None:
            cancel()
        if isinstance(exc, RequestTimeoutError):
            raise
        if timeout is not None and limit == timeout:
            raise node_timeout_error(name, timeout) from None
        raise RequestTimeoutError(
            f"Request {request_id} reached its deadline while calling {name!r} through a handle.", node=name
        ) from None
    except DagserveError:
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        error = unwrap(exc)
        if isinstance(error, DagserveError):
            raise error from exc
        text = str(error).strip().splitlines()[0] if str(error).strip() else "(no message)"
        raise NodeError(
            f"Node {name!r} (called through a handle) raised {type(error).__name__}: {text}",
            node=name,
            error_type=type(error).__name__,
        ) from exc
