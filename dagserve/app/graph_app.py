"""An :class:`App`: one deployed graph you can call, stream, map, serve, inspect, scale and stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dagserve._errors import DagserveError, NodeNotFoundError, RequestTimeoutError
from dagserve._hooks import hooks
from dagserve.app.deployment import Deployment
from dagserve.runtime.deadlines import FixedTimeout
from dagserve.runtime.executor import Executor, RequestContext, validate_payload
from dagserve.runtime.scope import RequestObserver, RequestScope, RequestTracing
from dagserve.runtime.streaming import DEFAULT_STREAM_TIMEOUT_S, StreamRun, ahop, hop

if TYPE_CHECKING:
    from dagserve.backends import Backend
    from dagserve.jobs import Job, JobQueue
    from dagserve.jobs.host import JobsHost
    from dagserve.compiler.plan import DeploymentSpec, Plan
    from dagserve.graph import Graph
    from dagserve.runtime.mapping import MapResult
    from dagserve.runtime.status import AppStatus

__all__ = ["PREPARE_TIMEOUT_S", "App"]

#: How long ``App.aprepare`` may wait for the backend's connections before reporting ready anyway.
PREPARE_TIMEOUT_S = 5.0


class App:
    """A deployed graph.

    ``call`` / ``acall`` run it; ``status`` reports per node; ``scale`` and ``update`` change one
    node while the others keep serving; ``shutdown`` (or leaving a ``with`` block) tears it down.
    A graph deployed with others (:class:`~dagserve.AppGroup`) shares their :class:`Deployment`:
    its operations act on the nodes they share, and ``shutdown`` stops them all.
    """

    def __init__(
        self,
        graph: Graph,
        plan: Plan,
        backend: Backend,
        *,
        request_timeout_s: float | None,
        stream_timeout_s: float | None = DEFAULT_STREAM_TIMEOUT_S,
        deployment: Deployment | None = None,
    ) -> None:
        self.graph = graph
        self._plan = plan
        #: What it shares with the graphs deployed with it (its own when deployed alone).
        self.deployment = deployment if deployment is not None else Deployment(backend, plan)
        self.deployment.members.append(self)
        self._request_deadline = FixedTimeout(request_timeout_s)
        self._executor = Executor(plan, backend.runner)
        #: Called after every request with (app, context, error or None, seconds).
        self.observers: list[RequestObserver] = []
        #: Requests running now (read by the metrics' in-flight gauge); changed on the home loop only.
        self.in_flight = 0
        #: Seconds a whole stream may last (``astream``/``stream``; ``None``: no limit).
        self.stream_timeout_s: float | None = stream_timeout_s
        #: Called per streamed item with (node, "first" | "gap", seconds) (metrics hang there).
        self.item_observer: Callable[[str, str, float], None] | None = None
        #: Opens each request's span when traces are exported (observe/otel.py ``Tracing.install``).
        self.tracing: RequestTracing | None = None

    # -- identity ------------------------------------------------------------------------------
    @property
    def request_timeout_s(self) -> float | None:
        """Seconds a request may run before it fails with RequestTimeoutError (``None``: no limit)."""
        return self._request_deadline.delay

    @request_timeout_s.setter
    def request_timeout_s(self, value: float | None) -> None:
        # The default deadline of every request, on one loop timer for all of them (see runtime/deadlines.py).
        self._request_deadline = FixedTimeout(value)

    @property
    def name(self) -> str:
        return self._plan.graph_name

    @property
    def backend(self) -> Backend:
        return self.deployment.backend

    @property
    def graphs(self) -> dict[str, App]:
        """Empty: this App runs one graph (:attr:`AppGroup.graphs <dagserve.AppGroup.graphs>`
        holds the graphs deployed together)."""
        return {}

    def _for(self, graph: str | None) -> App:
        """This App, when ``graph`` names no other graph than its own."""
        if graph is None or graph == self.name:
            return self
        raise NodeNotFoundError(f"This App has no graph {graph!r}; it runs {self.name!r}.")

    @property
    def plan(self) -> Plan:
        """The plan in force (options change with ``scale`` and ``update``)."""
        return self._plan

    # -- calling -------------------------------------------------------------------------------
    def call(
        self, payload: Any, *, request_id: str | None = None, timeout_s: float | None = None, graph: str | None = None
    ) -> Any:
        """Run the graph on ``payload`` and return its output (blocking); ``graph`` names one of
        the graphs of an App deployed from a list.

        Inside async code use ``await app.acall(payload)`` instead.
        """
        self._for(graph)
        self._check_open()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            raise DagserveError(
                "App.call blocks and cannot run inside an event loop; use `await app.acall(payload)` there."
            )
        loop = self._home_loop(None)
        fut = asyncio.run_coroutine_threadsafe(self._run(payload, RequestContext(**_ctx_args(request_id)), timeout_s), loop)
        return fut.result()

    async def acall(
        self,
        payload: Any,
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
        context: RequestContext | None = None,
        graph: str | None = None,
    ) -> Any:
        """Run the graph on ``payload`` and return its output.

        ``context`` (optional) receives per-node timings and the routes taken.
        """
        self._for(graph)
        self._check_open()
        ctx = context or RequestContext(**_ctx_args(request_id))
        current = asyncio.get_running_loop()
        loop = self._home_loop(current)
        if loop is current:
            return await self._run(payload, ctx, timeout_s)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._run(payload, ctx, timeout_s), loop))

    async def aprepare(self, timeout_s: float = PREPARE_TIMEOUT_S) -> None:
        """Make the first request as fast as the later ones: bind the App to the running event loop
        and let its backend open what requests use (the Ray backend: its direct connections to the
        replicas). Best effort, within ``timeout_s``; what is not open by then opens with the first
        request, as without this. ``dagserve.serve`` calls it before it reports ready."""
        self._check_open()
        running = asyncio.get_running_loop()
        if self._home_loop(running) is running:
            await self.backend.prepare(timeout_s)

    async def _run(self, payload: Any, ctx: RequestContext, timeout_s: float | None) -> Any:
        """Run one request through its scope (runtime/scope.py): every door ends up here or in
        :meth:`_stream_items`."""
        if self._plan.streams:  # call/acall of a streaming graph: its items in a list
            return [item async for item in self._stream_items(payload, ctx, timeout_s, None)]
        if timeout_s is None:
            timeout, deadline = self.request_timeout_s, self._request_deadline()
        else:
            timeout, deadline = timeout_s, asyncio.timeout(timeout_s)
        scope = RequestScope(self, ctx, timeout)
        error: BaseException | None = None
        tokens = scope.activate()
        try:
            scope.begin()
            if timeout is None:
                return await self._executor.run(payload, ctx)
            try:
                async with deadline:
                    return await self._executor.run(payload, ctx)
            except TimeoutError as exc:
                if isinstance(exc, RequestTimeoutError):
                    raise
                running = sorted(ctx.running)
                where = f"; still running: {', '.join(running)}" if running else ""
                raise RequestTimeoutError(
                    f"Request {ctx.request_id} did not finish within {timeout:g} s{where}. Raise the "
                    "request timeout, or make the slow node faster.",
                    node=running[0] if running else None,
                ) from None
        except BaseException as exc:
            error = exc
            raise
        finally:
            scope.deactivate(tokens)
            scope.end(error)

    # -- streaming (runtime/streaming.py) -------------------------------------------------------
    @property
    def streams(self) -> bool:
        """Does the graph's output stream (its output node is a generator)?"""
        return self._plan.streams

    def stream(self, payload: Any, *, request_id: str | None = None, timeout_s: float | None = None,
               stream_timeout_s: float | None = None) -> Iterator[Any]:
        """The items of the graph's output as they are produced (a blocking iterator; closing it
        stops the stream). A graph that does not stream gives its output as one item."""
        self._check_open()
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            raise DagserveError("App.stream blocks; inside an event loop use `async for item in app.astream(payload)`.")
        ctx = RequestContext(**_ctx_args(request_id))
        return hop(self._stream_items(payload, ctx, timeout_s, stream_timeout_s), self._home_loop(None))

    def astream(self, payload: Any, *, request_id: str | None = None, timeout_s: float | None = None,
                stream_timeout_s: float | None = None, context: RequestContext | None = None) -> AsyncIterator[Any]:
        """``async for item in app.astream(payload)``: :meth:`stream` for async code.

        ``timeout_s`` (default: the App's request timeout) bounds the time to the first item,
        ``stream_timeout_s`` (default: the App's) the whole stream."""
        self._check_open()
        ctx = context or RequestContext(**_ctx_args(request_id))
        current = asyncio.get_running_loop()
        loop = self._home_loop(current)
        items = self._stream_items(payload, ctx, timeout_s, stream_timeout_s)
        return items if loop is current else ahop(items, loop)

    def _stream_items(self, payload: Any, ctx: RequestContext, timeout_s: float | None,
                      stream_timeout_s: float | None) -> AsyncIterator[Any]:
        if not self._plan.streams:
            return _one(self._run(payload, ctx, timeout_s))
        ctx.item_observer = self.item_observer
        timeout = self.request_timeout_s if timeout_s is None else timeout_s
        run = StreamRun(
            functools.partial(self._executor.run, payload, ctx),
            scope=RequestScope(self, ctx, timeout),
            timeout_s=timeout,
            stream_timeout_s=self.stream_timeout_s if stream_timeout_s is None else stream_timeout_s,
        )
        return run.items()

    def map(self, payloads: Iterable[Any], *, concurrency: int = 64, ordered: bool = True, return_exceptions: bool = True) -> Iterator[Any]:
        """Run the graph over ``payloads`` (any iterable, read lazily) with bounded concurrency.

        Yields results as they complete, in input order when ``ordered``. With
        ``return_exceptions`` a failed payload yields its exception instead of stopping the run.
        """
        from dagserve.runtime.mapping import map_app

        return map_app(self, payloads, concurrency=concurrency, ordered=ordered, return_exceptions=return_exceptions)

    def map_results(self, payloads: Iterable[Any], *, concurrency: int = 64, ordered: bool = True) -> Iterator[MapResult[Any]]:
        """Like :meth:`map`, but yields a :class:`~dagserve.MapResult` per payload: ``index``,
        ``payload``, ``ok``, ``value``, ``error`` and per-node ``timings`` (useful when unordered)."""
        from dagserve.runtime.mapping import map_results

        return map_results(self, payloads, concurrency=concurrency, ordered=ordered)

    def asgi(self, **options: Any) -> Any:
        """The ASGI (Starlette) app serving this graph over HTTP, to mount in your own web app::

            web = Starlette(routes=[Mount("/ml", app=app.asgi())])   # POST /ml/ runs the graph

        ``options`` are those of :func:`dagserve.asgi_app` (``token``, ``max_body_bytes`` ...).
        The App stays yours: shut it down when your server stops.
        """
        # The HTTP layer, above this one; an App of several graphs serves each at its name.
        return hooks.need("asgi_app")(self, **options)

    # -- jobs (dagserve/jobs, docs/jobs.md) -----------------------------------------------------
    def submit(self, payload: Any, graph: str | None = None, key: str | None = None) -> Job:
        """Queue the graph's run on ``payload`` (stored when this returns); a repeated idempotency
        ``key`` returns the first job. ``app.submit({"text": "..."}).result(timeout=600)``."""
        self._check_open()
        self._for(graph)
        validate_payload(self._plan.input_schema, payload)  # refused now (InputValidationError), not when it runs
        return self._job_host().submit(payload, self.name, key)

    def job(self, job_id: str) -> Job:
        """The job ``job_id`` (:class:`~dagserve.JobNotFoundError` if there is none)."""
        return self._job_host().job(job_id)

    def jobs(self, status: str | None = None, *, graph: str | None = None, limit: int = 100, after: str | None = None) -> list[Job]:
        """Jobs in submission order, from the one after the id ``after``, at most ``limit``."""
        return self._job_host().jobs(graph, status, limit, after)

    def job_queue(self) -> JobQueue:
        """The jobs' queue, its worker started on the App's loop (the HTTP routes and servers call it)."""
        return self._job_host().queue()

    def job_queue_in_use(self) -> JobQueue | None:
        """The jobs' queue if something used it already (the metrics read it), else ``None``."""
        return self._job_host().opened()

    def _job_host(self) -> JobsHost:
        jobs = self.deployment.jobs
        if jobs is None:
            raise DagserveError("This App has no job queue; deploy it with dagserve.deploy.")
        return jobs

    # -- operating -----------------------------------------------------------------------------
    def status(self) -> AppStatus:
        """Per node: deployment name, target/running/pending replicas (and why), options in force;
        ``jobs``: the job queue's figures (this graph's) once it is used."""
        self._check_open()
        return self.deployment.status(self.name if len(self.deployment.members) > 1 else None)

    def scale(self, node: Any, *, wait_s: float = 60.0, **options: Any) -> None:
        """Change one node's replicas while traffic flows: ``app.scale("Classifier", num_replicas=4)``.

        ``node`` is a node's name or its object (function node, model instance or call). Only
        ``num_replicas`` and ``autoscaling`` are accepted; other nodes are not touched.
        """
        self.deployment.scale(node, wait_s=wait_s, **options)

    def update(
        self,
        node: Any,
        *,
        implementation: Any = None,
        init_args: tuple[Any, ...] | None = None,
        init_kwargs: dict[str, Any] | None = None,
        wait_s: float = 120.0,
        **options: Any,
    ) -> None:
        """Rolling update of one node: new options and/or a new implementation.

        ``implementation`` is a replacement function (for a function node) or class (for a model
        node, optionally with new ``init_args``/``init_kwargs``); it must offer the methods the graph
        calls. Other nodes keep running untouched.
        """
        self.deployment.update(
            node, implementation=implementation, init_args=init_args, init_kwargs=init_kwargs, wait_s=wait_s, **options
        )

    def spec_replaced(self, new: DeploymentSpec) -> None:
        """A node's spec changed (scale, update): this graph's plan and executor take it if it runs it."""
        if not any(d.name == new.name for d in self._plan.deployments):
            return
        deployments = tuple(new if d.name == new.name else d for d in self._plan.deployments)
        self._plan = replace(self._plan, deployments=deployments)
        self._executor = Executor(self._plan, self.backend.runner, previous=self._executor)

    def shutdown(self) -> None:
        """Tear the graph down (idempotent); the graphs deployed with it go too. Requests
        afterwards raise :class:`AppClosedError`."""
        self.deployment.shutdown()

    @property
    def closed(self) -> bool:
        return self.deployment.closed

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "running"
        return f"<dagserve.App {self.name!r} backend={self.backend.name!r} {state}>"

    # -- loop handling -------------------------------------------------------------------------
    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        return self.deployment.loop

    def _check_open(self) -> None:
        self.deployment.check_open(self.name)

    def _home_loop(self, current: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
        """The loop requests run on: the first running loop that called us, else a private one
        (one for the graphs deployed together)."""
        return self.deployment.home_loop(current)


async def _one(result: Awaitable[Any]) -> AsyncIterator[Any]:
    """A graph that does not stream: its one output, as a stream of one item."""
    yield await result


def _ctx_args(request_id: str | None) -> dict[str, Any]:
    return {"request_id": request_id} if request_id else {}
