"""What the graphs of one ``dagserve.deploy`` share: the backend running their deployments, the
plan it runs, one home event loop, and the operations on nodes (status, scale, update, shut down).

An :class:`~dagserve.App` runs one graph's requests on a :class:`Deployment`; a graph deployed on
its own has one of its own, the graphs deployed together (:class:`~dagserve.AppGroup`) share one,
so that a node several of them use runs once and a change to it reaches each of them.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from dagserve._errors import AppClosedError, DeployError, OptionsError
from dagserve._options import make_options

if TYPE_CHECKING:
    from dagserve.backends import Backend
    from dagserve.jobs.host import JobsHost
    from dagserve.compiler.plan import DeploymentSpec, Plan
    from dagserve.runtime.status import AppStatus

__all__ = ["Deployment", "Member"]

_SCALE_FIELDS = frozenset({"num_replicas", "autoscaling"})
_UPDATE_FIELDS = frozenset(
    {"num_replicas", "autoscaling", "max_batch_size", "batch_wait_timeout_s", "max_ongoing_requests",
     "max_queued_requests", "timeout_s", "retries", "num_cpus", "num_gpus", "memory", "resources"}
)


class Member(Protocol):
    """A graph running on a :class:`Deployment` (an App): told when a node's spec changes."""

    def spec_replaced(self, new: DeploymentSpec) -> None: ...


class Deployment:
    """One backend's deployments and what runs them (see the module docstring).

    ``name`` names it in errors and its loop thread (the graph's name, or ``"ga+gb"``).
    """

    def __init__(self, backend: Backend, plan: Plan) -> None:
        self.backend = backend
        #: The plan in force (scale and update replace node specs in it).
        self.plan = plan
        self.members: list[Member] = []
        self.closed = False
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        #: The queued jobs of the graphs (dagserve/jobs, docs/jobs.md), set by ``deploy``.
        self.jobs: JobsHost | None = None

    @property
    def name(self) -> str:
        return self.plan.graph_name

    # -- the home loop -------------------------------------------------------------------------
    def check_open(self, what: str) -> None:
        if self.closed:
            raise AppClosedError(f"App {what!r} was shut down; deploy the graph again to use it.")

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The home loop, once a request chose it."""
        return self._loop

    def home_loop(self, current: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
        """The loop requests run on: the first running loop that called us, else a private one."""
        loop = self._loop
        if loop is not None and loop.is_running():
            return loop
        with self._lock:
            loop = self._loop
            if loop is not None and loop.is_running():
                return loop
            self._loop = current if current is not None else self._start_thread_loop()
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

    # -- operating -----------------------------------------------------------------------------
    def status(self, graph: str | None = None) -> AppStatus:
        """The backend's status, with the job queue's figures (of ``graph``, else all) once it is used."""
        self.check_open(self.name)
        status = self.backend.status()
        stats = self.jobs.stats(graph) if self.jobs is not None else None
        return status if stats is None else replace(status, jobs=stats)

    def scale(self, node: Any, *, wait_s: float, **options: Any) -> None:
        self.check_open(self.name)
        if not options:
            raise OptionsError("App.scale needs num_replicas=N or autoscaling={...}.")
        bad = sorted(set(options) - _SCALE_FIELDS)
        if bad:
            raise OptionsError(
                f"App.scale changes replicas only (num_replicas, autoscaling), not {', '.join(bad)}; "
                "use App.update for other options."
            )
        spec = self.plan.deployment(node)
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
        implementation: Any,
        init_args: tuple[Any, ...] | None,
        init_kwargs: dict[str, Any] | None,
        wait_s: float,
        **options: Any,
    ) -> None:
        self.check_open(self.name)
        spec = self.plan.deployment(node)
        bad = sorted(set(options) - _UPDATE_FIELDS)
        if bad:
            raise OptionsError(
                f"App.update cannot change {', '.join(bad)} on a running node; redeploy the graph for that."
            )
        new = replace(spec, options=make_options(spec.name, spec.options, **options))
        if implementation is not None or init_args is not None or init_kwargs is not None:
            new = swap_implementation(new, implementation, init_args, init_kwargs)
        with self._lock:
            self.backend.update(spec, new, wait_s=wait_s)
            self._replace_spec(new)

    def _replace_spec(self, new: DeploymentSpec) -> None:
        deployments = tuple(new if d.name == new.name else d for d in self.plan.deployments)
        self.plan = replace(self.plan, deployments=deployments)
        for member in self.members:
            member.spec_replaced(new)

    def shutdown(self) -> None:
        """Tear the deployments down (idempotent); the job queue stops first, so that running jobs
        go back to the queue instead of failing with the nodes."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        try:
            if self.jobs is not None:
                self.jobs.shutdown()
            self.backend.shutdown()
        finally:
            if self._thread is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=5)


def swap_implementation(
    spec: DeploymentSpec, implementation: Any, init_args: tuple[Any, ...] | None, init_kwargs: dict[str, Any] | None
) -> DeploymentSpec:
    """``spec`` running ``implementation`` (a function or class, or a dagserve node wrapping one)
    and/or new constructor arguments; :class:`~dagserve.OptionsError` when they do not fit."""
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
