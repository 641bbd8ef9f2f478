"""Many models per node: a replica's cache of loaded models, and the id of the current call.

A model node class declares a loader with :func:`multiplexed`::

    @dagserve.node(num_replicas=4)
    class Tenant:
        @dagserve.multiplexed(max_models_per_replica=8)
        async def load(self, model_id: str) -> Model:
            return await fetch_weights(model_id)

        async def __call__(self, x: list[float]) -> float:
            model = await self.load(dagserve.model_id())
            return model.predict(x)

Calling the decorated method gives the model from the replica's :class:`ModelCache`, loading it on
a miss (concurrent calls for an id being loaded wait for that one load) and evicting the least
recently used model past ``max_models_per_replica``: the class's ``unload(self, model_id, model)``
is called, else the model's ``close()``. A load that fails is not cached (the next call loads
again) and its error is the call's. The graph gives each call its id (``Tenant()(x,
model_id=inp["tenant"])``); the backend routes it to a replica that holds the model
(:mod:`dagserve.runtime.replica_slots`) and the replica's host makes it current
(:func:`model_id` reads it) around the call or the batch. Both backends use this module; it knows
nothing of Ray.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dagserve._errors import GraphError, ModelIdError
from dagserve.graph.loaders import LOADER_ATTR, MAX_MODEL_ID_LENGTH, valid_model_id

__all__ = [
    "DEFAULT_MAX_MODELS",
    "LOADER_ATTR",
    "MAX_MODEL_ID_LENGTH",
    "MODEL_ID_HEADER",
    "MODEL_ID_KEY",
    "ModelCache",
    "attach_cache",
    "cache_of",
    "check_model_id",
    "model_id",
    "model_report",
    "multiplexed",
    "reset_model_id",
    "set_model_id",
    "take_model_id",
]

log = logging.getLogger("dagserve.multiplex")

#: The keyword a call to a multiplexed node carries its model id in (as the user wrote it).
MODEL_ID_KEY = "model_id"
#: The HTTP header that gives the id when the payload lacks the field ``model_id=`` reads.
MODEL_ID_HEADER = "x-dagserve-model-id"
DEFAULT_MAX_MODELS = 3
_CACHE_ATTR = "_dagserve_model_cache"

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("dagserve_model_id", default=None)


def model_id() -> str | None:
    """The model id of the call being served (``model_id=`` in the graph), ``None`` outside one.

    Node code of a multiplexed node reads it to pick its model: ``await self.load(dagserve.model_id())``;
    a batch of a batched multiplexed node holds calls of one id only, and sees that id.
    """
    return _current.get()


def set_model_id(value: str | None) -> contextvars.Token[str | None]:
    return _current.set(value)


def reset_model_id(token: contextvars.Token[str | None]) -> None:
    _current.reset(token)


def check_model_id(value: Any, node: str) -> str:
    """``value`` when it is a usable model id, else :class:`ModelIdError` (HTTP 422) naming ``node``."""
    if valid_model_id(value):
        return value
    if not isinstance(value, str):
        why = f"a {type(value).__name__}"
    elif not value:
        why = "empty"
    elif len(value) > MAX_MODEL_ID_LENGTH:
        why = f"{len(value)} characters long"
    else:
        why = "not printable"
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise ModelIdError(
        f"Node {node!r} got the model id {shown}, which is {why}; a model id is a non-empty string of at "
        f"most {MAX_MODEL_ID_LENGTH} printable characters.",
        [{"loc": ["model_id"], "msg": f"model id is {why}", "type": "model_id"}],
        node=node,
    )


def take_model_id(kwargs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A multiplexed node's call keywords without the model id, and the id (a replica's host
    consumes it: the user's method never receives it)."""
    if MODEL_ID_KEY not in kwargs:
        return kwargs, None
    rest = dict(kwargs)
    return rest, rest.pop(MODEL_ID_KEY)


# -- the decorator ---------------------------------------------------------------------------------


class _Loader:
    """What :func:`multiplexed` makes of a loader method: a descriptor whose bound form goes
    through the instance's :class:`ModelCache`."""

    def __init__(self, fn: Callable[..., Any], max_models: int) -> None:
        self.fn = fn
        self.max_models_per_replica = max_models
        self.is_async = inspect.iscoroutinefunction(fn)
        self.name = fn.__name__
        setattr(self, LOADER_ATTR, max_models)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        cache = cache_of(instance, self)
        return cache.get if self.is_async else cache.get_sync


def multiplexed(fn: Callable[..., Any] | None = None, /, *, max_models_per_replica: int = DEFAULT_MAX_MODELS) -> Any:
    """Declare a model node's loader: ``load(self, model_id)`` returns the model for one id.

    Calling ``self.load(model_id)`` (awaited when the loader is ``async def``) returns the model from
    this replica's cache: loaded on a miss, once however many calls ask for it meanwhile; past
    ``max_models_per_replica`` models the least recently used is evicted (``unload(self, model_id,
    model)`` on the class when it defines one, else the model's ``close()`` when it has one).
    ``self.load()`` without an id loads the current call's (:func:`model_id`). See docs/multiplexing.md.
    """
    n = max_models_per_replica
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise GraphError(
            f"@dagserve.multiplexed(max_models_per_replica={max_models_per_replica!r}): give a whole number of "
            "models, at least 1."
        )

    def wrap(load: Callable[..., Any]) -> _Loader:
        if isinstance(load, _Loader):
            raise GraphError(f"{load.name!r} is already a multiplexed loader; decorate it once.")
        if not inspect.isfunction(load):
            raise GraphError(
                f"@dagserve.multiplexed decorates a loader method `def load(self, model_id)`, not {load!r}."
            )
        params = list(inspect.signature(load).parameters)
        if len(params) != 2:
            raise GraphError(
                f"The multiplexed loader {load.__qualname__!r} takes (self, model_id), got ({', '.join(params)}); "
                "it loads one model by its id and returns it."
            )
        return _Loader(load, max_models_per_replica)

    return wrap if fn is None else wrap(fn)


# -- the cache -------------------------------------------------------------------------------------


class ModelCache:
    """One replica's loaded models, least recently used first, at most ``max_models`` once each
    load and the eviction it causes have finished. Safe from the event loop and from threads.

    ``on_change()`` is called whenever the ids held or being loaded change (the replica reports
    them for routing); ``report()`` gives the counters for status and metrics: ``hits`` are calls
    served without a load of their own (the model was loaded, or being loaded by another call),
    ``misses`` the calls that loaded it (``loads`` counts those that succeeded).
    """

    def __init__(self, instance: Any, loader: _Loader, on_change: Callable[[], None] | None = None) -> None:
        self._instance = instance
        self._loader = loader
        self.max_models = loader.max_models_per_replica
        self.on_change = on_change
        unload = getattr(type(instance), "unload", None)
        self._unload = unload if callable(unload) else None
        self._held: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._loading: dict[str, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()
        self.loads = self.evictions = self.hits = self.misses = self.failures = 0
        self.load_seconds = 0.0

    def ids(self) -> frozenset[str]:
        """The ids held and being loaded (where a call for one of them is best sent)."""
        with self._lock:
            return frozenset(self._held) | frozenset(self._loading)

    def held(self) -> list[str]:
        """The ids loaded, least recently used first."""
        with self._lock:
            return list(self._held)

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {
                "held": list(self._held),
                "max": self.max_models,
                "loads": self.loads,
                "load_seconds": self.load_seconds,
                "evictions": self.evictions,
                "hits": self.hits,
                "misses": self.misses,
                "failures": self.failures,
            }

    # -- async loaders ---------------------------------------------------------------------------
    async def get(self, model_id: str | None = None) -> Any:
        mid = self._id(model_id)
        while True:
            found, fut, evicted = self._lookup(mid)
            if fut is None:
                return found
            if evicted is None:  # another call loads it: wait for that load
                try:
                    return await asyncio.shield(asyncio.wrap_future(fut))
                except asyncio.CancelledError:
                    if fut.cancelled():
                        continue  # its loader's call was cancelled: load it here
                    raise
            for old_id, old in evicted:
                await self._release_async(old_id, old)
            started = time.perf_counter()
            try:
                model = await self._loader.fn(self._instance, mid)
            except BaseException as exc:
                self._failed(mid, fut, exc)
                raise
            for old_id, old in self._loaded(mid, fut, model, time.perf_counter() - started):
                await self._release_async(old_id, old)
            return model

    # -- sync loaders ----------------------------------------------------------------------------
    def get_sync(self, model_id: str | None = None) -> Any:
        mid = self._id(model_id)
        while True:
            found, fut, evicted = self._lookup(mid)
            if fut is None:
                return found
            if evicted is None:
                try:
                    return fut.result()
                except concurrent.futures.CancelledError:
                    continue
            for old_id, old in evicted:
                self._release_sync(old_id, old)
            started = time.perf_counter()
            try:
                model = self._loader.fn(self._instance, mid)
            except BaseException as exc:
                self._failed(mid, fut, exc)
                raise
            for old_id, old in self._loaded(mid, fut, model, time.perf_counter() - started):
                self._release_sync(old_id, old)
            return model

    # -- the shared bookkeeping ------------------------------------------------------------------
    def _id(self, model_id: str | None) -> str:
        if model_id is None:
            model_id = _current.get()
            if model_id is None:
                raise ModelIdError(
                    f"{self._loader.name}() was called without a model id outside a call that has one; pass "
                    "the id, or call it while serving a call made with model_id=.",
                    [{"loc": ["model_id"], "msg": "no model id", "type": "model_id"}],
                )
        return check_model_id(model_id, type(self._instance).__name__)

    def _lookup(self, mid: str) -> tuple[Any, concurrent.futures.Future[Any] | None, list[tuple[str, Any]] | None]:
        """``(model, None, None)`` on a hit; ``(None, load, None)`` when another call loads it;
        ``(None, load, evicted)`` when this call must load it (after releasing ``evicted``)."""
        changed = False
        with self._lock:
            model = self._held.get(mid, _MISSING)
            if model is not _MISSING:
                self._held.move_to_end(mid)
                self.hits += 1
                return model, None, None
            fut = self._loading.get(mid)
            if fut is not None:
                self.hits += 1  # served by a load in flight: no load of its own (coalesced)
                return None, fut, None
            self.misses += 1
            fut = self._loading[mid] = concurrent.futures.Future()
            # Room for it before it loads (memory for the new weights), oldest first.
            evicted = self._evict(len(self._held) + len(self._loading) - self.max_models)
            changed = True
        if changed:
            self._changed()
        return None, fut, evicted

    def _loaded(
        self, mid: str, fut: concurrent.futures.Future[Any], model: Any, seconds: float
    ) -> list[tuple[str, Any]]:
        with self._lock:
            self._loading.pop(mid, None)
            self._held[mid] = model
            self.loads += 1
            self.load_seconds += seconds
            evicted = self._evict(len(self._held) - self.max_models, keep=mid)
        fut.set_result(model)
        self._changed()
        return evicted

    def _failed(self, mid: str, fut: concurrent.futures.Future[Any], exc: BaseException) -> None:
        with self._lock:
            self._loading.pop(mid, None)
            if not isinstance(exc, asyncio.CancelledError):
                self.failures += 1
        if isinstance(exc, (asyncio.CancelledError, concurrent.futures.CancelledError)):
            fut.cancel()  # those waiting load it again themselves
        else:
            fut.set_exception(exc)  # those waiting fail with the same error; the next call retries
        self._changed()

    def _evict(self, over: int, keep: str | None = None) -> list[tuple[str, Any]]:
        """Take the ``over`` least recently used models out (the lock is held)."""
        out: list[tuple[str, Any]] = []
        for mid in list(self._held):
            if over <= 0:
                break
            if mid == keep:
                continue
            out.append((mid, self._held.pop(mid)))
            self.evictions += 1
            over -= 1
        return out

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # noqa: BLE001 - reporting never fails a call
                log.exception("Reporting the models of %s failed", type(self._instance).__name__)

    def _releaser(self, mid: str, model: Any) -> Callable[[], Any] | None:
        """What releases an evicted model: the class's ``unload``, else the model's ``close``."""
        if self._unload is not None:
            return functools.partial(self._unload, self._instance, mid, model)
        close = getattr(model, "close", None)
        return close if callable(close) else None

    async def _release_async(self, mid: str, model: Any) -> None:
        release = self._releaser(mid, model)
        if release is None:
            return
        try:
            if _is_async(release):
                await release()
            else:  # a plain close() may block (freeing device memory): not on the event loop
                context = contextvars.copy_context()
                result = await asyncio.get_running_loop().run_in_executor(None, context.run, release)
                if inspect.isawaitable(result):
                    await result
        except Exception:  # noqa: BLE001 - a failed release is logged; the call goes on
            log.exception("Releasing model %r of %s failed", mid, type(self._instance).__name__)

    def _release_sync(self, mid: str, model: Any) -> None:
        release = self._releaser(mid, model)
        if release is None:
            return
        try:
            result = release()
            if inspect.isawaitable(result):
                asyncio.run(_awaited(result))  # a sync loader's thread has no running loop
        except Exception:  # noqa: BLE001
            log.exception("Releasing model %r of %s failed", mid, type(self._instance).__name__)


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn.func if isinstance(fn, functools.partial) else fn)


_MISSING: Any = object()


async def _awaited(result: Any) -> Any:
    return await result


def cache_of(instance: Any, loader: _Loader) -> ModelCache:
    """The instance's model cache (made on first use)."""
    cache = instance.__dict__.get(_CACHE_ATTR)
    if cache is None:
        cache = instance.__dict__.setdefault(_CACHE_ATTR, ModelCache(instance, loader))
    return cache


def attach_cache(instance: Any, loader_name: str, on_change: Callable[[], None] | None) -> ModelCache:
    """A replica's host takes its instance's cache at start (to report what it holds)."""
    loader = inspect.getattr_static(type(instance), loader_name)
    cache = cache_of(instance, loader)
    cache.on_change = on_change
    return cache


def model_report(instance: Any) -> dict[str, Any] | None:
    """The instance's cache report (``ModelCache.report()``), ``None`` before its first load."""
    cache = getattr(instance, "__dict__", {}).get(_CACHE_ATTR)
    return cache.report() if cache is not None else None
