"""The in-process backend: the same plan, no Ray, for unit tests and small services.

Each deployment gets ``num_replicas`` in-process replicas (a model class is constructed once per
replica), each taking at most ``max_ongoing_requests`` at once, with at most
``max_queued_requests`` waiting for a slot before :class:`~dagserve.OverloadedError` (the slots
and the queue are :class:`~dagserve.runtime.replicas.ReplicaSlots`, as on Ray's direct
transport). Batched nodes use the same grouping rules as on Ray Serve. Async node code runs on
the event loop; sync node code runs where :class:`~dagserve.runtime.sync_calls.SyncCalls` says:
in a thread pool, or inline on the loop once it has proven fast, so a slow one never blocks it.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dagserve._errors import DeployError, OverloadedError
from dagserve.backends.base import Backend
from dagserve.runtime.batching import Batcher
from dagserve.runtime.handles import InProcessHandles, RunnerCaller
from dagserve.runtime.replicas import QueueFull, ReplicaSlots
from dagserve.runtime.status import AppStatus, NodeStatus
from dagserve.runtime.streaming import close_streams, consume, iterate, stream_readers
from dagserve.runtime.sync_calls import SyncCalls, sync_force

if TYPE_CHECKING:
    from dagserve._options import NodeOptions
    from dagserve.compiler.plan import DeploymentSpec, Plan, Step
    from dagserve.runtime.executor import RequestContext
    from dagserve.runtime.tracing import CallSpan

__all__ = ["LocalBackend"]

_ids = itertools.count(1)


class _Replica:
    __slots__ = ("batchers", "id", "instance", "ongoing", "spec", "sync", "takes_calls")

    def __init__(self, spec: DeploymentSpec, pool: ThreadPoolExecutor, on_batch: Callable[[int], None] | None = None) -> None:
        self.spec = spec
        self.id = f"{spec.name}#{next(_ids)}"
        self.ongoing = 0
        #: Not draining (a plain attribute: read on every call by ReplicaSlots.pick).
        self.takes_calls = True
        self.sync = SyncCalls(spec.name, pool, force=sync_force(spec.options.inline_sync, spec))
        if spec.kind == "model":
            try:
                self.instance = spec.target(*spec.init_args, **dict(spec.init_kwargs))
            except Exception as exc:
                raise DeployError(
                    f"Node {spec.name!r} failed to start: its __init__ raised {type(exc).__name__}: {exc}"
                ) from exc
        else:
            self.instance = None
        self.batchers: dict[str, Batcher] = {}
        size = spec.options.max_batch_size
        if size is not None:
            for m in spec.methods:
                self.batchers[m] = Batcher(
                    spec.name, functools.partial(self._invoke, m), size, spec.options.batch_wait_timeout_s, on_batch
                )

    def bound(self, method: str) -> Any:
        if self.instance is None:
            return self.spec.target
        return getattr(self.instance, method)

    @property
    def draining(self) -> bool:
        """Going away (scale-down, update): it finishes what it holds and takes no new call."""
        return not self.takes_calls

    @draining.setter
    def draining(self, draining: bool) -> None:
        self.takes_calls = not draining

    async def _invoke(self, method: str, items: list[Any]) -> Any:
        fn = self.bound(method)
        if self.spec.is_async(method):
            return await fn(items)
        return await self.sync.call_batch(method, fn, items)


class _LocalDeployment:
    def __init__(self, spec: DeploymentSpec, pool: ThreadPoolExecutor) -> None:
        # Its bounds come from the spec (set just below, and again whenever the spec changes).
        self.slots: ReplicaSlots[_Replica, asyncio.Future[_Replica]] = ReplicaSlots(
            _hand_over, max_ongoing=0, max_queued=None
        )
        self.spec = spec
        self.pool = pool
        # Batch sizes over every replica this deployment ever had (for metrics).
        self.batch_counts: collections.Counter[int] = collections.Counter()
        self.replicas = [_Replica(spec, pool, self.count_batch) for _ in range(spec.options.initial_replicas())]

    def count_batch(self, size: int) -> None:
        self.batch_counts[size] += 1

    @property
    def spec(self) -> DeploymentSpec:
        return self._spec

    @spec.setter
    def spec(self, spec: DeploymentSpec) -> None:  # scale and update replace the spec
        self._spec = spec
        # Read on every call: worked out once.
        self.slots.max_ongoing = spec.options.effective_max_ongoing_requests
        self.slots.max_queued = spec.options.max_queued_requests

    @property
    def replicas(self) -> list[_Replica]:
        return self.slots.replicas

    @replicas.setter
    def replicas(self, replicas: list[_Replica]) -> None:  # replaced whole (scale, update, drain)
        self.slots.replicas = replicas

    async def _wait_for_slot(self) -> _Replica:
        """Queue for a slot (handed over as one frees); OverloadedError when the queue is full."""
        fut: asyncio.Future[_Replica] = asyncio.get_running_loop().create_future()
        try:
            self.slots.wait(fut)
        except QueueFull as full:
            raise OverloadedError(
                f"Node {self.spec.name!r} is overloaded: {full.queued} requests already wait "
                f"(max_queued_requests={full.max_queued}). Retry later, or add replicas.",
                node=self.spec.name,
            ) from None
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())
            raise
        finally:
            self.slots.forget(fut)

    def release(self, r: _Replica) -> None:
        r.ongoing -= 1
        if self.slots.waiters:
            self.slots.freed(r)

    def wake(self) -> None:
        self.slots.wake()

    async def call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], span: CallSpan | None = None, handles: bool = False
    ) -> Any:
        """One call on a replica with room; ``handles``: its arguments hold handles (the step's
        templates do), so sync code runs on a thread."""
        r = self.slots.for_new_call()
        if r is None:
            r = await self._wait_for_slot()
        else:
            r.ongoing += 1
        try:
            batcher = r.batchers.get(method)
            if span is not None:  # traces are exported (observe/otel.py)
                span.set("dagserve.replica", r.id)
            if batcher is not None:
                value = await batcher.submit(args[0])
                if span is not None:  # the batch this call was in has just finished: still the last one
                    span.set("dagserve.batch_size", batcher.batch_sizes[-1])
                return value
            fn = r.bound(method)
            if self.spec.is_async(method):
                return await fn(*args, **kwargs)
            if handles:
                return await r.sync.call_with_handles(method, fn, *args, **kwargs)
            return await r.sync.call(method, fn, *args, **kwargs)
        finally:
            self.release(r)


    async def stream(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """A generator node's items, pulled one at a time; the replica slot is held until the
        stream ends or is closed (then the streams it read are closed too)."""
        r = self.slots.for_new_call()
        if r is None:
            r = await self._wait_for_slot()
        else:
            r.ongoing += 1
        source: AsyncIterator[Any] | None = None
        try:
            source = iterate(r.bound(method)(*args, **kwargs), self.pool)
            async for item in source:
                yield item
        finally:
            if source is not None and hasattr(source, "aclose"):
                await source.aclose()
            self.release(r)
            await close_streams(args, kwargs)


def _hand_over(fut: asyncio.Future[_Replica], r: _Replica) -> None:
    """A waiter gets a freed slot on ``r`` (taken now), unless it gave up meanwhile."""
    if not fut.done():
        r.ongoing += 1
        fut.set_result(r)


class _LocalRunner:
    passthrough = False

    def __init__(self, deployments: dict[str, _LocalDeployment]) -> None:
        self.deployments = deployments
        #: Turns the handle refs a call step passes into handles (set by LocalBackend).
        self.handles: InProcessHandles | None = None
        #: Call steps that read a stream (they close it when they end): see deploy.
        self.reads_streams: frozenset[int] = frozenset()

    def call(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: RequestContext) -> Any:
        holds = False
        if self.handles is not None:
            args, kwargs, holds = self.handles.call_args(step, args, kwargs)
        span = ctx.span.calling if ctx.span is not None else None
        call = self.deployments[step.deployment].call(step.method, args, kwargs, span, holds)  # type: ignore[index,arg-type]
        if step.index in self.reads_streams:
            return consume(call, args, kwargs)
        return call

    def stream(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: RequestContext) -> AsyncIterator[Any]:
        if self.handles is not None:
            args, kwargs = self.handles.args(step, args, kwargs)
        return self.deployments[step.deployment].stream(step.method, args, kwargs)  # type: ignore[index,arg-type]


class LocalBackend(Backend):
    """Runs every node in this process. ``max_threads`` bounds the pool for sync node code."""

    name = "local"

    def __init__(self, *, max_threads: int = 64) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="dagserve-node")
        self._deployments: dict[str, _LocalDeployment] = {}
        self._runner = _LocalRunner(self._deployments)
        # Handles in this process call through the runner, on the App's loop (runtime/handles.py).
        self._handles = InProcessHandles(
            RunnerCaller(lambda: self._runner, lambda name: self._deployments[name].spec, lambda: self._loop)
        )
        self._runner.handles = self._handles
        self._plan: Plan | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def deploy(self, plan: Plan, *, ready_timeout_s: float) -> None:
        self._plan = plan
        self._runner.reads_streams = stream_readers(plan)
        for spec in plan.deployments:
            self._deployments[spec.name] = _LocalDeployment(self._handles.spec(spec), self._pool)

    def bind_loop(self, loop: Any) -> None:
        self._loop = loop

    @property
    def runner(self) -> _LocalRunner:
        return self._runner

    def status(self) -> AppStatus:
        nodes = {}
        for name, d in self._deployments.items():
            live = [r for r in d.replicas if not r.draining]
            nodes[name] = NodeStatus(
                name=name,
                kind=d.spec.kind,
                inline=d.spec.inline,
                state="RUNNING",
                target_replicas=len(live),
                running_replicas=len(live),
                options=d.spec.options.in_force(),
                replica_ids=tuple(r.id for r in live),
                transport="inline",  # every node runs in this process
            )
        return AppStatus(graph=self._plan.graph_name if self._plan else "", backend=self.name, nodes=nodes)

    def batch_sizes(self) -> dict[str, dict[int, int]]:
        return {name: dict(d.batch_counts) for name, d in list(self._deployments.items()) if d.batch_counts}

    def ongoing(self) -> dict[str, int]:
        # Read from another thread while the loop runs: plain ints and a list copy, never wrong by more than a call.
        deployments = list(self._deployments.items())
        return {name: sum(r.ongoing for r in list(d.replicas)) + len(d.slots.waiters) for name, d in deployments}

    def scale(self, spec: DeploymentSpec, options: NodeOptions, *, wait_s: float) -> None:
        from dataclasses import replace

        d = self._deployments[spec.name]
        target = options.initial_replicas()
        with self._lock:
            d.spec = replace(d.spec, options=options)
            live = [r for r in d.replicas if not r.draining]
            if target > len(live):
                added = [_Replica(d.spec, self._pool, d.count_batch) for _ in range(target - len(live))]
                d.replicas = d.replicas + added
                self._call_on_loop(d.wake)
            elif target < len(live):
                # Drop the least busy replicas; they finish what they hold before they go.
                going = sorted(live, key=lambda r: r.ongoing)[: len(live) - target]
                for r in going:
                    r.draining = True
                self._drain(d, going, wait_s)

    def update(self, spec: DeploymentSpec, new: DeploymentSpec, *, wait_s: float) -> None:
        d = self._deployments[spec.name]
        with self._lock:
            old = [r for r in d.replicas if not r.draining]
            new = self._handles.spec(new)
            fresh = [_Replica(new, self._pool, d.count_batch) for _ in range(new.options.initial_replicas())]
            d.spec = new
            for r in old:
                r.draining = True
            d.replicas = d.replicas + fresh
            self._call_on_loop(d.wake)
            self._drain(d, old, wait_s)

    def _drain(self, d: _LocalDeployment, going: list[_Replica], wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while any(r.ongoing for r in going) and time.monotonic() < deadline:
            if self._loop is not None and self._loop.is_running() and _on_loop_thread(self._loop):
                break  # cannot wait on our own loop; the replicas finish and are dropped below
            time.sleep(0.01)
        gone = {id(r) for r in going}
        d.replicas = [r for r in d.replicas if id(r) not in gone or r.ongoing]
        if any(r.ongoing for r in going):
            self._schedule_cleanup(d, going)

    def _schedule_cleanup(self, d: _LocalDeployment, going: list[_Replica]) -> None:
        def sweep() -> None:
            d.replicas = [r for r in d.replicas if not (r.draining and r.ongoing == 0 and r in going)]

        threading.Timer(1.0, sweep).start()

    def _call_on_loop(self, fn: Any) -> None:
        loop = self._loop
        if loop is not None and loop.is_running() and not _on_loop_thread(loop):
            loop.call_soon_threadsafe(fn)
        elif loop is not None and loop.is_running():
            fn()

    def shutdown(self) -> None:
        self._deployments.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
