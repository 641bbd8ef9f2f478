"""One node host: what runs a node's code in a replica, for every backend.

A :class:`NodeHost` is one replica's copy of a node: it builds the user's model instance once
(or holds the function), its batchers (one per called method), and where its sync code runs
(:class:`~dagserve.runtime.sync_calls.SyncCalls`), and dispatches a call, a batch or a stream
to the right method. The local backend's replicas and Ray's replicas (``NodeReplica``) both wrap
one; so do the in-process nodes of the Ray backend (nodes that run inline in the ingress), through
:class:`InProcessNode`, the local backend's deployment: its replicas, their slots and queue.

Failures are not turned into errors here: the caller knows the step's name and builds the typed
error with :func:`dagserve.runtime.failures.node_failure` (the executor in process, the replica
on Ray), one place for both.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from dagserve._errors import DeployError, OverloadedError
from dagserve.runtime.batching import Batcher
from dagserve.runtime.multiplex import ModelCache, attach_cache, reset_model_id, set_model_id, take_model_id
from dagserve.runtime.replica_slots import QueueFull, ReplicaSlots
from dagserve.runtime.streaming import close_streams, iterate
from dagserve.runtime.sync_calls import SyncCalls, sync_force

if TYPE_CHECKING:
    from dagserve.compiler.plan import DeploymentSpec
    from dagserve.runtime.tracing import CallSpan

__all__ = ["InProcessNode", "InProcessReplica", "NodeCode", "NodeHost"]

#: Turns a model's constructor arguments into what it is built with (handle refs into handles).
InitResolver = Callable[[tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]


@dataclass(frozen=True)
class NodeCode:
    """What a host needs of a node: its code and how it is called (no graph objects)."""

    name: str
    kind: Literal["model", "function"]
    target: Any
    methods: tuple[str, ...]
    async_methods: frozenset[str]
    init_args: tuple[Any, ...] = ()
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    max_batch_size: int | None = None
    batch_wait_timeout_s: float = 0.01
    #: The node's ``inline_sync`` option: where its sync code runs (``None``: adaptive).
    inline_sync: bool | None = None
    #: A multiplexed node's loader method (``@dagserve.multiplexed``, runtime/multiplex.py); ``None``: one model.
    multiplexed: str | None = None

    @classmethod
    def of(cls, spec: DeploymentSpec) -> NodeCode:
        """The code of a plan's deployment."""
        options = spec.options
        return cls(
            name=spec.name,
            kind=spec.kind,
            target=spec.target,
            methods=spec.methods,
            async_methods=spec.async_methods,
            init_args=spec.init_args,
            init_kwargs=dict(spec.init_kwargs),
            max_batch_size=options.max_batch_size,
            batch_wait_timeout_s=options.batch_wait_timeout_s,
            inline_sync=options.inline_sync,
            multiplexed=spec.multiplexed.loader if spec.multiplexed is not None else None,
        )


class NodeHost:
    """One replica's copy of a node (see the module docstring).

    ``pool`` runs sync node code that goes to threads and steps sync generators; ``resolve_init``
    turns the model's constructor arguments into what it is built with; ``on_batch`` is told each
    batch's size. Raises :class:`~dagserve.DeployError` when the model's ``__init__`` fails.
    """

    __slots__ = ("batch_counts", "batchers", "code", "instance", "models", "pool", "sync")

    def __init__(
        self,
        code: NodeCode,
        pool: ThreadPoolExecutor,
        *,
        resolve_init: InitResolver | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.code = code
        self.pool = pool
        self.sync = SyncCalls(code.name, pool, force=sync_force(code.inline_sync, code))
        self.instance: Any = None
        if code.kind == "model":
            args, kwargs = code.init_args, dict(code.init_kwargs)
            try:
                if resolve_init is not None:
                    args, kwargs = resolve_init(args, kwargs)
                self.instance = code.target(*args, **kwargs)
            except Exception as exc:
                raise DeployError(
                    f"Node {code.name!r} failed to start: its __init__ raised {type(exc).__name__}: {exc}"
                ) from exc
        #: A multiplexed node's model cache (runtime/multiplex.py), ``None`` for one model.
        self.models: ModelCache | None = (
            attach_cache(self.instance, code.multiplexed, None) if code.multiplexed is not None else None
        )
        #: Batches run, by size (this host's).
        self.batch_counts: collections.Counter[int] = collections.Counter()
        counted = self._counter(on_batch)
        self.batchers: dict[str, Batcher] = {}
        if code.max_batch_size is not None:
            for method in code.methods:
                self.batchers[method] = Batcher(
                    code.name,
                    functools.partial(self.run_batch, method),
                    code.max_batch_size,
                    code.batch_wait_timeout_s,
                    on_batch=counted,
                )

    def _counter(self, on_batch: Callable[[int], None] | None) -> Callable[[int], None]:
        counts = self.batch_counts

        def counted(size: int) -> None:
            counts[size] += 1
            if on_batch is not None:
                on_batch(size)

        return counted

    def bound(self, method: str) -> Any:
        """The callable behind ``method``: the model's bound method, or the function."""
        if self.instance is None:
            return self.code.target
        return getattr(self.instance, method)

    async def call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, handles: bool = False, model: str | None = None
    ) -> Any:
        """One call of ``method`` (through its batcher when batched); ``handles``: its arguments
        hold handles, so sync code runs on a thread (where ``handle.call()`` may wait); ``model``:
        a multiplexed node's model id (:func:`dagserve.model_id` reads it; batches never mix ids)."""
        token = set_model_id(model) if model is not None else None
        try:
            batcher = self.batchers.get(method)
            if batcher is not None:
                return await batcher.submit(args[0], model)
            fn = self.bound(method)
            if method in self.code.async_methods:
                return await fn(*args, **kwargs)
            if handles:
                return await self.sync.call_with_handles(method, fn, *args, **kwargs)
            return await self.sync.call(method, fn, *args, **kwargs)
        finally:
            if token is not None:
                reset_model_id(token)

    def take_model(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """A multiplexed node's call: its keyword arguments without the model id, and the id."""
        if self.code.multiplexed is None:
            return kwargs, None
        return take_model_id(kwargs)

    async def run_batch(self, method: str, items: list[Any]) -> Any:
        """One batch of ``method`` (its batcher's call): the list of its results."""
        fn = self.bound(method)
        if method in self.code.async_methods:
            return await fn(items)
        return await self.sync.call_batch(method, fn, items)

    def stream(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """A generator node's call: its items as an async iterator (a sync generator is stepped
        on the pool, one ``next`` per item asked for). Raises ``TypeError`` when the node
        returned something else than a generator."""
        return iterate(self.bound(method)(*args, **kwargs), self.pool)

    def last_batch_size(self, method: str) -> int | None:
        """The size of the batch ``method``'s last call ran in (``None``: not batched, or none yet)."""
        batcher = self.batchers.get(method)
        return batcher.answered or None if batcher is not None else None


_ids = itertools.count(1)


class InProcessReplica:
    """An in-process replica: a host, its id, and its place in the node's slots."""

    __slots__ = ("host", "id", "models", "ongoing", "takes_calls")

    def __init__(self, host: NodeHost) -> None:
        self.host = host
        self.id = f"{host.code.name}#{next(_ids)}"
        self.ongoing = 0
        #: Not draining (a plain attribute: read on every call by ReplicaSlots.pick).
        self.takes_calls = True
        #: The model ids it holds or loads (a multiplexed node), for routing (ReplicaSlots.pick).
        self.models: frozenset[str] = frozenset()
        cache = host.models
        if cache is not None:
            cache.on_change = lambda: setattr(self, "models", cache.ids())

    @property
    def draining(self) -> bool:
        """Going away (scale-down, update): it finishes what it holds and takes no new call."""
        return not self.takes_calls

    @draining.setter
    def draining(self, draining: bool) -> None:
        self.takes_calls = not draining


class InProcessNode:
    """A node's replicas in this process (the local backend's nodes, and the Ray backend's nodes
    that run inline in the ingress): each a :class:`NodeHost`, each taking at most
    ``max_ongoing_requests`` calls at once, at most ``max_queued_requests`` waiting for a slot
    before :class:`~dagserve.OverloadedError`."""

    def __init__(self, spec: DeploymentSpec, pool: ThreadPoolExecutor) -> None:
        # Its bounds come from the spec (set just below, and again whenever the spec changes).
        self.slots: ReplicaSlots[InProcessReplica, asyncio.Future[InProcessReplica]] = ReplicaSlots(
            _hand_over, max_ongoing=0, max_queued=None
        )
        self.spec = spec
        self.pool = pool
        # Batch sizes over every replica this node ever had (for metrics).
        self.batch_counts: collections.Counter[int] = collections.Counter()
        self.replicas = [self.new_replica() for _ in range(spec.options.initial_replicas())]

    def new_replica(self, spec: DeploymentSpec | None = None) -> InProcessReplica:
        """A replica of this node's spec (or of ``spec``, for an update), built now."""
        return InProcessReplica(NodeHost(NodeCode.of(spec or self.spec), self.pool, on_batch=self.count_batch))

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
    def replicas(self) -> list[InProcessReplica]:
        return self.slots.replicas

    @replicas.setter
    def replicas(self, replicas: list[InProcessReplica]) -> None:  # replaced whole (scale, update, drain)
        self.slots.replicas = replicas

    async def _slot(self, model: str | None = None) -> InProcessReplica:
        """A replica with room (for ``model``, one that holds it when one can: ReplicaSlots.pick),
        taken now; queue for one (handed over as one frees) when all are busy, or
        :class:`OverloadedError` when the queue is full."""
        r = self.slots.for_new_call(model)
        if r is not None:
            r.ongoing += 1
            return r
        fut: asyncio.Future[InProcessReplica] = asyncio.get_running_loop().create_future()
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

    def release(self, r: InProcessReplica) -> None:
        r.ongoing -= 1
        if self.slots.waiters:
            self.slots.freed(r)

    def wake(self) -> None:
        self.slots.wake()

    async def call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], span: CallSpan | None = None, handles: bool = False
    ) -> Any:
        """One call on a replica with room; ``handles``: its arguments hold handles (the step's
        templates do), so sync code runs on a thread. A multiplexed node's call goes by its model id."""
        model = None
        if self.spec.multiplexed is not None:
            kwargs, model = take_model_id(kwargs)
        r = await self._slot(model)
        try:
            if span is None:
                return await r.host.call(method, args, kwargs, handles=handles, model=model)
            span.set("dagserve.replica", r.id)  # traces are exported (observe/otel.py)
            value = await r.host.call(method, args, kwargs, handles=handles, model=model)
            size = r.host.last_batch_size(method)  # the batch this call was in has just finished
            if size is not None:
                span.set("dagserve.batch_size", size)
            return value
        finally:
            self.release(r)

    async def stream(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """A generator node's items, pulled one at a time; the replica slot is held until the
        stream ends or is closed (then the streams it read are closed too)."""
        r = await self._slot()
        source: AsyncIterator[Any] | None = None
        try:
            source = r.host.stream(method, args, kwargs)
            async for item in source:
                yield item
        finally:
            if source is not None and hasattr(source, "aclose"):
                await source.aclose()
            self.release(r)
            await close_streams(args, kwargs)


def _hand_over(fut: asyncio.Future[InProcessReplica], r: InProcessReplica) -> None:
    """A waiter gets a freed slot on ``r`` (taken now), unless it gave up meanwhile."""
    if not fut.done():
        r.ongoing += 1
        fut.set_result(r)
