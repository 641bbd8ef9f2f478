"""The in-process backend: the same plan, no Ray, for unit tests and small services.

Each deployment is an :class:`~dagserve.runtime.node_host.InProcessNode`: ``num_replicas``
in-process replicas, each a :class:`~dagserve.runtime.node_host.NodeHost` (a model class is
constructed once per replica), each taking at most ``max_ongoing_requests`` at once, with at most
``max_queued_requests`` waiting for a slot before :class:`~dagserve.OverloadedError` (the slots
and the queue are :class:`~dagserve.runtime.replica_slots.ReplicaSlots`, as on Ray's direct
transport). Batched nodes use the same grouping rules as on Ray Serve. Async node code runs on
the event loop; sync node code runs where :class:`~dagserve.runtime.sync_calls.SyncCalls` says:
in a thread pool, or inline on the loop once it has proven fast, so a slow one never blocks it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dagserve.backends.base import Backend
from dagserve.runtime.call_stats import merge as merge_calls
from dagserve.runtime.handles import InProcessHandles, RunnerCaller
from dagserve.runtime.node_host import InProcessNode, InProcessReplica
from dagserve.runtime.multiplex import model_report
from dagserve.runtime.status import AppStatus, NodeStatus, models_status
from dagserve.runtime.streaming import consume, stream_readers

if TYPE_CHECKING:
    from dagserve._options import NodeOptions
    from dagserve.compiler.plan import DeploymentSpec, Plan, Step
    from dagserve.runtime.executor import RequestContext

__all__ = ["LocalBackend"]

class _LocalRunner:
    passthrough = False

    def __init__(self, deployments: dict[str, InProcessNode]) -> None:
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
        self._deployments: dict[str, InProcessNode] = {}
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
            self._deployments[spec.name] = InProcessNode(self._handles.spec(spec), self._pool)

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
                models=models_status(_max_models(d.spec), {r.id: model_report(r.host.instance) for r in live}),
            )
        return AppStatus(graph=self._plan.graph_name if self._plan else "", backend=self.name, nodes=nodes)

    def batch_sizes(self) -> dict[str, dict[int, int]]:
        return {name: dict(d.batch_counts) for name, d in list(self._deployments.items()) if d.batch_counts}

    def handle_calls(self) -> dict[tuple[str, str, str], list[float]]:
        return merge_calls([self._handles.stats.snapshot()])

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
                added = [d.new_replica() for _ in range(target - len(live))]
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
            fresh = [d.new_replica(new) for _ in range(new.options.initial_replicas())]
            d.spec = new
            for r in old:
                r.draining = True
            d.replicas = d.replicas + fresh
            self._call_on_loop(d.wake)
            self._drain(d, old, wait_s)

    def _drain(self, d: InProcessNode, going: list[InProcessReplica], wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while any(r.ongoing for r in going) and time.monotonic() < deadline:
            if self._loop is not None and self._loop.is_running() and _on_loop_thread(self._loop):
                break  # cannot wait on our own loop; the replicas finish and are dropped below
            time.sleep(0.01)
        gone = {id(r) for r in going}
        d.replicas = [r for r in d.replicas if id(r) not in gone or r.ongoing]
        if any(r.ongoing for r in going):
            self._schedule_cleanup(d, going)

    def _schedule_cleanup(self, d: InProcessNode, going: list[InProcessReplica]) -> None:
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


def _max_models(spec: DeploymentSpec) -> int | None:
    return spec.multiplexed.max_models_per_replica if spec.multiplexed is not None else None


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
