"""An :class:`AppGroup`: several graphs deployed together, one :class:`~dagserve.App` each, on one
set of deployments (a node several graphs use runs once: one set of replicas, one state)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from dagserve._errors import NodeNotFoundError
from dagserve._hooks import hooks
from dagserve.app.deployment import Deployment
from dagserve.app.graph_app import App

if TYPE_CHECKING:
    from dagserve.backends import Backend
    from dagserve.jobs import Job, JobQueue
    from dagserve.compiler.plan import Plan
    from dagserve.runtime.executor import RequestContext
    from dagserve.runtime.mapping import MapResult
    from dagserve.runtime.status import AppStatus

__all__ = ["AppGroup"]


class AppGroup:
    """The graphs of ``dagserve.deploy([graph_a, graph_b, ...])``.

    Each graph is an :class:`~dagserve.App` in :attr:`graphs`; calling the group needs
    ``graph=`` (``group.call(payload, graph="a")`` is ``group.graphs["a"].call(payload)``).
    ``status``, ``scale``, ``update`` and ``shutdown`` act on the deployments they share, and
    ``asgi()`` serves every graph at its name::

        with dagserve.deploy([classify, summarize], backend="local") as group:
            group.call({"text": "hi"}, graph="classify")
    """

    def __init__(self, deployment: Deployment, graphs: dict[str, App]) -> None:
        self.deployment = deployment
        self._graphs = dict(graphs)

    # -- identity ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The graphs' names joined with ``+`` (``"ga+gb"``)."""
        return self.deployment.name

    @property
    def graphs(self) -> dict[str, App]:
        """Each graph's App, by name."""
        return dict(self._graphs)

    @property
    def plan(self) -> Plan:
        """The plan of every deployment the graphs use (options change with ``scale`` and ``update``)."""
        return self.deployment.plan

    @property
    def backend(self) -> Backend:
        return self.deployment.backend

    def _for(self, graph: str | None) -> App:
        app = self._graphs.get(graph) if graph is not None else None
        if app is None:
            names = ", ".join(map(repr, self._graphs))
            raise NodeNotFoundError(f"This App has no graph {graph!r}; pass graph= one of {names}.")
        return app

    # -- calling: the named graph's App --------------------------------------------------------
    def call(self, payload: Any, *, graph: str | None = None, request_id: str | None = None, timeout_s: float | None = None) -> Any:
        """:meth:`App.call <dagserve.App.call>` of the graph ``graph``."""
        return self._for(graph).call(payload, request_id=request_id, timeout_s=timeout_s)

    async def acall(
        self,
        payload: Any,
        *,
        graph: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
        context: RequestContext | None = None,
    ) -> Any:
        """:meth:`App.acall <dagserve.App.acall>` of the graph ``graph``."""
        return await self._for(graph).acall(payload, request_id=request_id, timeout_s=timeout_s, context=context)

    def stream(self, payload: Any, *, graph: str | None = None, **options: Any) -> Iterator[Any]:
        """:meth:`App.stream <dagserve.App.stream>` of the graph ``graph``."""
        return self._for(graph).stream(payload, **options)

    def astream(self, payload: Any, *, graph: str | None = None, **options: Any) -> AsyncIterator[Any]:
        """:meth:`App.astream <dagserve.App.astream>` of the graph ``graph``."""
        return self._for(graph).astream(payload, **options)

    def map(self, payloads: Iterable[Any], *, graph: str | None = None, **options: Any) -> Iterator[Any]:
        """:meth:`App.map <dagserve.App.map>` of the graph ``graph``."""
        return self._for(graph).map(payloads, **options)

    def map_results(self, payloads: Iterable[Any], *, graph: str | None = None, **options: Any) -> Iterator[MapResult[Any]]:
        """:meth:`App.map_results <dagserve.App.map_results>` of the graph ``graph``."""
        return self._for(graph).map_results(payloads, **options)

    # -- jobs: the graphs share one queue ---------------------------------------------------------
    def submit(self, payload: Any, graph: str | None = None, key: str | None = None) -> Job:
        """:meth:`App.submit <dagserve.App.submit>` of the graph ``graph``."""
        return self._for(graph).submit(payload, key=key)

    def job(self, job_id: str) -> Job:
        """The job ``job_id`` of any of the graphs."""
        return self._any().job(job_id)

    def jobs(self, status: str | None = None, *, graph: str | None = None, limit: int = 100, after: str | None = None) -> list[Job]:
        """Jobs of every graph (or of ``graph``), in submission order (:meth:`App.jobs <dagserve.App.jobs>`)."""
        return self._any().jobs(status, graph=graph, limit=limit, after=after)

    def job_queue(self) -> JobQueue:
        return self._any().job_queue()

    def job_queue_in_use(self) -> JobQueue | None:
        return self._any().job_queue_in_use()

    def _any(self) -> App:
        return next(iter(self._graphs.values()))

    def asgi(self, **options: Any) -> Any:
        """The ASGI app serving every graph at ``POST /<name>`` (``GET /`` lists them); ``options``
        as for :func:`dagserve.asgi_app`."""
        return hooks.need("asgi_app")(self, **options)

    # -- operating: the shared deployments -----------------------------------------------------
    def status(self) -> AppStatus:
        """Per node of every graph (a shared node once)."""
        return self.deployment.status()

    def scale(self, node: Any, *, wait_s: float = 60.0, **options: Any) -> None:
        """:meth:`App.scale <dagserve.App.scale>`: the node changes for every graph that uses it."""
        self.deployment.scale(node, wait_s=wait_s, **options)

    def update(self, node: Any, *, wait_s: float = 120.0, **options: Any) -> None:
        """:meth:`App.update <dagserve.App.update>`: the node changes for every graph that uses it."""
        implementation = options.pop("implementation", None)
        init_args = options.pop("init_args", None)
        init_kwargs = options.pop("init_kwargs", None)
        self.deployment.update(
            node, implementation=implementation, init_args=init_args, init_kwargs=init_kwargs, wait_s=wait_s, **options
        )

    def shutdown(self) -> None:
        """Tear every graph down (idempotent)."""
        self.deployment.shutdown()

    @property
    def closed(self) -> bool:
        return self.deployment.closed

    def __enter__(self) -> AppGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "running"
        return f"<dagserve.AppGroup {list(self._graphs)!r} backend={self.backend.name!r} {state}>"
