"""``dagserve.deploy(graph) -> App``: a running graph you can call, inspect, scale and stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from dagserve._errors import (
    AppClosedError,
    DagserveError,
    DeployError,
    GraphError,
    NodeNotFoundError,
    OptionsError,
    RequestTimeoutError,
)
from dagserve._hooks import hooks
from dagserve._options import DEFAULT_BACKEND, DEFAULT_READY_TIMEOUT_S, DEFAULT_REQUEST_TIMEOUT_S, make_options
from dagserve.backends import Backend, get_backend
from dagserve.deploy_config import ConfigSource, compile_with_config
from dagserve.graph import Graph
from dagserve.jobs import Job, JobSettings, JobStore
from dagserve.jobs.host import JobsHost, job_capacity
from dagserve.runtime.deadlines import FixedTimeout
from dagserve.runtime.executor import Executor, RequestContext, validate_payload
from dagserve.runtime.handles import enter_request, leave_request
from dagserve.runtime.request_id import reset_request_id, set_request_id
from dagserve.runtime.streaming import DEFAULT_STREAM_TIMEOUT_S, StreamRun, ahop, hop
from dagserve.runtime.tracing import reset_trace, set_trace

if TYPE_CHECKING:
    from dagserve.compiler.plan import DeploymentSpec, Plan
    from dagserve.jobs import JobQueue
    from dagserve.runtime.mapping import MapResult
    from dagserve.runtime.status import AppStatus

__all__ = ["DEFAULT_BACKEND", "DEFAULT_REQUEST_TIMEOUT_S", "App", "deploy"]


_SCALE_FIELDS = frozenset({"num_replicas", "autoscaling"})
_UPDATE_FIELDS = frozenset(
    {"num_replicas", "autoscaling", "max_batch_size", "batch_wait_timeout_s", "max_ongoing_requests",
     "max_queued_requests", "timeout_s", "retries", "num_cpus", "num_gpus", "memory", "resources"}
)

RequestObserver = Callable[["App", RequestContext, "BaseException | None", float], None]


class RequestTracing(Protocol):
    """Opens a request's span as it starts (``observe/otel.py``); an observer ends it."""

    def begin(self, app: App, ctx: RequestContext) -> None: ...


def deploy(
    graph: Graph | list[Graph] | tuple[Graph, ...],
    backend: str | Backend | None = None,
    *,
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    stream_timeout_s: float | None = DEFAULT_STREAM_TIMEOUT_S,
    config: ConfigSource | None = None,
    jobs_store: str | os.PathLike[str] | JobStore | None = None,
    jobs: JobSettings | None = None,
    **backend_options: Any,
) -> App:
    """Compile ``graph`` and bring it up on ``backend``; returns the running :class:`App`.

    ``backend`` is ``"ray"`` (Ray Serve, the default) or ``"local"`` (in-process, no Ray), or a
    backend instance; ``backend_options`` go to the backend (for Ray: ``address=``, ``num_gpus=`` ...)::

        with dagserve.deploy(graph, backend="local") as app:
            print(app.call({"text": "hello"}))

    Several graphs (a list) are one App: ``app.call(payload, graph="name")``, ``app.asgi()`` routes
    to each by name, and a node several of them use is deployed once (one set of replicas).

    ``stream_timeout_s`` bounds a whole stream of a graph whose output streams (docs/streaming.md).
    ``config`` (a path to a YAML config file, or a dict of the same shape) overrides node options
    set in code: ``graphs: {<graph name>: {nodes: {<node>: {num_replicas: 3}}}}`` (docs/deploy.md).
    ``jobs_store`` keeps the jobs of ``app.submit`` (docs/jobs.md): ``None`` in memory for the App's
    life, a SQLite file path or ``redis://HOST:PORT/DB`` durably; ``jobs`` sets how they run.

    Raises :class:`~dagserve.CompileError` for an invalid graph, :class:`~dagserve.OptionsError`
    for a config naming an unknown graph, node or option, and
    :class:`~dagserve.DeployError` when deployments are not ready within ``ready_timeout_s``.
    """
    graphs, plan, per_graph = _compile(graph, config)
    be = get_backend(backend or DEFAULT_BACKEND, **backend_options)
    if graphs and getattr(be, "ingress_replicas", None) is not None:
        raise DeployError(
            "Several graphs deployed together are served by this process (app.asgi(), dagserve.serve); "
            "ingress_replicas=N serves one graph: deploy each graph on its own for that."
        )
    try:
        be.deploy(plan, ready_timeout_s=ready_timeout_s)
    except BaseException:
        with contextlib.suppress(Exception):
            be.shutdown()
        raise
    timeouts = {"request_timeout_s": request_timeout_s, "stream_timeout_s": stream_timeout_s}
    app = App(graph if not graphs else None, plan, be, **timeouts)  # type: ignore[arg-type]
    for g, p in zip(graphs, per_graph, strict=True):
        view = app._graphs[g.name] = App(g, p, be, **timeouts)
        view._parent = app
    app._jobs = JobsHost(
        jobs_store, jobs or JobSettings(), graphs=[g.name for g in graphs] or [app.name], capacity=job_capacity(plan),
        run=app._run_job, home_loop=app._home_loop, encode=hooks.need("dump_json"),
        in_flight=lambda: app.in_flight + sum(view.in_flight for view in app._graphs.values()),
    )
    return app


def _compile(graph: Any, config: ConfigSource | None) -> tuple[list[Graph], Plan, list[Plan]]:
    """(the graphs of a list, the plan to deploy, each graph's plan); one graph: ([], its plan, [])."""
    if isinstance(graph, Graph):
        return [], compile_with_config(graph, config), []
    if not isinstance(graph, (list, tuple)):
        raise GraphError(f"dagserve.deploy takes a dagserve.Graph, got {type(graph).__name__}.")
    bad = [type(g).__name__ for g in graph if not isinstance(g, Graph)]
    if bad or not graph:
        raise GraphError(f"dagserve.deploy takes a list of dagserve.Graph objects, got {bad or 'an empty list'}.")
    from dagserve.compiler.shared import share_deployments

    names = [g.name for g in graph]
    plan, per_graph = share_deployments([compile_with_config(g, config, others=names) for g in graph])
    return list(graph), plan, per_graph


class App:
    """A deployed graph.

    ``call`` / ``acall`` run it; ``status`` reports per node; ``scale`` and ``update`` change one
    node while the others keep serving; ``shutdown`` (or leaving a ``with`` block) tears it down.
    """

    def __init__(
        self,
        graph: Graph,
        plan: Plan,
        backend: Backend,
        *,
        request_timeout_s: float | None,
        stream_timeout_s: float | None = DEFAULT_STREAM_TIMEOUT_S,
    ) -> None:
        self.graph = graph
        self._plan = plan
        self.backend = backend
        self._request_deadline = FixedTimeout(request_timeout_s)
        self._executor = Executor(plan, backend.runner)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        #: Called after every request with (app, context, error or None, seconds).
        self.observers: list[RequestObserver] = []
        #: Requests running now (read by the metrics' in-flight gauge); changed on the home loop only.
        self.in_flight = 0
        # Several graphs deployed together: one App per graph on this App's backend and loop.
        self._graphs: dict[str, App] = {}
        self._parent: App | None = None
        #: Seconds a whole stream may last (``astream``/``stream``; ``None``: no limit).
        self.stream_timeout_s: float | None = stream_timeout_s
        #: Called per streamed item with (node, "first" | "gap", seconds) (metrics hang there).
        self.item_observer: Callable[[str, str, float], None] | None = None
        #: Opens each request's span when traces are exported (observe/otel.py ``Tracing.install``).
        self.tracing: RequestTracing | None = None
        self._jobs: JobsHost | None = None  # set by deploy (dagserve/jobs/host.py)

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
    def graphs(self) -> dict[str, App]:
        """The graphs of an App deployed from a list, by name (each an App sharing this one's nodes)."""
        return dict(self._graphs)

    def _for(self, graph: str | None) -> App:
        """The App running ``graph`` (this one, or one of the graphs deployed with it)."""
        if not self._graphs:
            if graph is None or graph == self.name:
                return self
        elif graph in self._graphs:
            return self._graphs[graph]
        names = ", ".join(map(repr, self._graphs or [self.name]))
        raise NodeNotFoundError(f"This App has no graph {graph!r}; pass graph= one of {names}.")

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
        if graph is not None or self._graphs:
            return self._for(graph).call(payload, request_id=request_id, timeout_s=timeout_s)
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
        if graph is not None or self._graphs:
            return await self._for(graph).acall(payload, request_id=request_id, timeout_s=timeout_s, context=context)
        self._check_open()
        ctx = context or RequestContext(**_ctx_args(request_id))
        current = asyncio.get_running_loop()
        loop = self._home_loop(current)
        if loop is current:
            return await self._run(payload, ctx, timeout_s)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._run(payload, ctx, timeout_s), loop))

    async def _run(self, payload: Any, ctx: RequestContext, timeout_s: float | None) -> Any:
        if self._plan.streams:  # call/acall of a streaming graph: its items in a list
            return [item async for item in self._stream_items(payload, ctx, timeout_s, None)]
        if timeout_s is None:
            timeout, deadline = self.request_timeout_s, self._request_deadline()
        else:
            timeout, deadline = timeout_s, asyncio.timeout(timeout_s)
        loop = asyncio.get_running_loop()
        start = loop.time()
        error: BaseException | None = None
        self.in_flight += 1
        # Node code and log records in this process see the request id (dagserve.current_request_id).
        token = set_request_id(ctx.request_id)
        if timeout is not None and ctx.deadline is None:
            ctx.deadline = time.monotonic() + timeout  # handle calls carry it on (runtime/handles.py)
        request = enter_request(ctx)
        trace_token = set_trace(ctx.trace.traceparent if ctx.trace is not None else None)  # log records' trace_id
        try:
            if self.tracing is not None:
                self.tracing.begin(self, ctx)
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
            leave_request(request)
            reset_request_id(token)
            reset_trace(trace_token)
            self.in_flight -= 1
            if self.observers:
                elapsed = loop.time() - start
                for observe in self.observers:
                    observe(self, ctx, error, elapsed)

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
        executor = self._executor
        start = time.perf_counter()
        opened = False

        async def open_stream() -> Any:
            nonlocal opened
            opened = True
            self.in_flight += 1
            return await executor.run(payload, ctx)

        def finish(error: BaseException | None) -> None:
            if opened:
                self.in_flight -= 1
            for observe in self.observers:
                observe(self, ctx, error, time.perf_counter() - start)

        ctx.item_observer = self.item_observer
        run = StreamRun(
            open_stream,
            ctx=ctx,
            timeout_s=self.request_timeout_s if timeout_s is None else timeout_s,
            stream_timeout_s=self.stream_timeout_s if stream_timeout_s is None else stream_timeout_s,
            finish=finish,
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
        return hooks.need("asgi_app")(list(self._graphs.values()) or self, **options)

    # -- jobs (dagserve/jobs, docs/jobs.md) -----------------------------------------------------
    def submit(self, payload: Any, graph: str | None = None, key: str | None = None) -> Job:
        """Queue the graph's run on ``payload`` (stored when this returns); a repeated idempotency
        ``key`` returns the first job. ``app.submit({"text": "..."}).result(timeout=600)``."""
        self._check_open()
        app = self._for(graph)
        validate_payload(app.plan.input_schema, payload)  # refused now (InputValidationError), not when it runs
        return self._job_host().submit(payload, app.name, key)

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
        root = self._parent or self
        if root._jobs is None:
            raise DagserveError("This App has no job queue; deploy it with dagserve.deploy.")
        return root._jobs

    async def _run_job(self, payload: Any, graph: str, ctx: RequestContext) -> Any:
        return await self.acall(payload, context=ctx, graph=graph if self._graphs else None)

    # -- operating -----------------------------------------------------------------------------
    def status(self) -> AppStatus:
        """Per node: deployment name, target/running/pending replicas (and why), options in force;
        ``jobs``: the job queue's figures once it is used."""
        self._check_open()
        jobs = (self._parent or self)._jobs
        stats = jobs.stats(self.name if self._parent is not None else None) if jobs is not None else None
        return self.backend.status() if stats is None else replace(self.backend.status(), jobs=stats)

    def scale(self, node: Any, *, wait_s: float = 60.0, **options: Any) -> None:
        """Change one node's replicas while traffic flows: ``app.scale("Classifier", num_replicas=4)``.

        ``node`` is a node's name or its object (function node, model instance or call). Only
        ``num_replicas`` and ``autoscaling`` are accepted; other nodes are not touched.
        """
        if self._parent is not None:
            return self._parent.scale(node, wait_s=wait_s, **options)
        self._check_open()
        if not options:
            raise OptionsError("App.scale needs num_replicas=N or autoscaling={...}.")
        bad = sorted(set(options) - _SCALE_FIELDS)
        if bad:
            raise OptionsError(
                f"App.scale changes replicas only (num_replicas, autoscaling), not {', '.join(bad)}; "
                "use App.update for other options."
            )
        spec = self._plan.deployment(node)
        if spec.inline:
            raise OptionsError(f"Node {spec.name!r} runs inline in the ingress process and has no replicas to scale.")
        new_opts = make_options(spec.name, spec.options, **options)
        with self._lock:
            self.backend.scale(spec, new_opts, wait_s=wait_s)
            self._replace_spec(replace(spec, options=new_opts))

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
        if self._parent is not None:
            return self._parent.update(
                node, implementation=implementation, init_args=init_args, init_kwargs=init_kwargs, wait_s=wait_s, **options
            )
        self._check_open()
        spec = self._plan.deployment(node)
        bad = sorted(set(options) - _UPDATE_FIELDS)
        if bad:
            raise OptionsError(
                f"App.update cannot change {', '.join(bad)} on a running node; redeploy the graph for that."
            )
        new = replace(spec, options=make_options(spec.name, spec.options, **options))
        if implementation is not None or init_args is not None or init_kwargs is not None:
            new = _swap_implementation(new, implementation, init_args, init_kwargs)
        with self._lock:
            self.backend.update(spec, new, wait_s=wait_s)
            self._replace_spec(new)

    def _replace_spec(self, new: DeploymentSpec) -> None:
        deployments = tuple(new if d.name == new.name else d for d in self._plan.deployments)
        self._plan = replace(self._plan, deployments=deployments)
        self._executor = Executor(self._plan, self.backend.runner, previous=self._executor)
        for view in self._graphs.values():
            if any(d.name == new.name for d in view._plan.deployments):
                view._replace_spec(new)

    def shutdown(self) -> None:
        """Tear the graph down (idempotent). Requests afterwards raise :class:`AppClosedError`."""
        if self._parent is not None:
            return self._parent.shutdown()  # the graphs deployed together go together
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self._jobs is not None:
                self._jobs.shutdown()  # first: running jobs go back to the queue, not fail with the nodes
            self.backend.shutdown()
        finally:
            if self._thread is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=5)

    @property
    def closed(self) -> bool:
        return self._closed or (self._parent is not None and self._parent._closed)

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<dagserve.App {self.name!r} backend={self.backend.name!r} {state}>"

    # -- loop handling -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise AppClosedError(f"App {self.name!r} was shut down; deploy the graph again to use it.")

    def _home_loop(self, current: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
        """The loop requests run on: the first running loop that called us, else a private one."""
        if self._parent is not None:
            return self._parent._home_loop(current)  # one loop for the graphs deployed together
        loop = self._loop
        if loop is not None and loop.is_running():
            return loop
        with self._lock:
            loop = self._loop
            if loop is not None and loop.is_running():
                return loop
            if current is not None:
                self._loop = current
            else:
                self._loop = self._start_thread_loop()
            self.backend.bind_loop(self._loop)
            return self._loop

    def _start_thread_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"dagserve-app-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10):  # pragma: no cover - a thread that does not start is a broken host
            raise DeployError("The App's event loop thread did not start within 10 s.")
        return loop


async def _one(result: Awaitable[Any]) -> AsyncIterator[Any]:
    """A graph that does not stream: its one output, as a stream of one item."""
    yield await result


def _ctx_args(request_id: str | None) -> dict[str, Any]:
    return {"request_id": request_id} if request_id else {}


def _swap_implementation(
    spec: DeploymentSpec, implementation: Any, init_args: tuple[Any, ...] | None, init_kwargs: dict[str, Any] | None
) -> DeploymentSpec:
    import inspect

    from dagserve.graph import FunctionNode, ModelClass

    if isinstance(implementation, (FunctionNode, ModelClass)):
        implementation = implementation.fn if isinstance(implementation, FunctionNode) else implementation.cls
    if spec.kind == "function":
        if init_args is not None or init_kwargs is not None:
            raise OptionsError(f"Node {spec.name!r} is a function node; it has no constructor arguments.")
        if not callable(implementation) or inspect.isclass(implementation):
            raise OptionsError(f"Node {spec.name!r} is a function node; pass a function as implementation.")
        is_async = inspect.iscoroutinefunction(implementation)
        return replace(spec, target=implementation, async_methods=frozenset({"__call__"}) if is_async else frozenset())
    cls = implementation if implementation is not None else spec.target
    if not inspect.isclass(cls):
        raise OptionsError(f"Node {spec.name!r} is a model node; pass a class as implementation.")
    missing = [m for m in spec.methods if not callable(getattr(cls, m, None))]
    if missing:
        raise OptionsError(
            f"{cls.__name__} cannot replace node {spec.name!r}: it lacks the method(s) {', '.join(missing)} "
            "that the graph calls."
        )
    args = tuple(init_args) if init_args is not None else spec.init_args
    kwargs = dict(init_kwargs) if init_kwargs is not None else dict(spec.init_kwargs)
    try:
        inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as exc:
        raise OptionsError(f"{cls.__name__} cannot be constructed with these arguments: {exc}.") from None
    return replace(
        spec,
        target=cls,
        init_args=args,
        init_kwargs=kwargs,
        async_methods=frozenset(m for m in spec.methods if inspect.iscoroutinefunction(getattr(cls, m))),
    )
