"""The replica model cache, the model id and its checks (dagserve/runtime/multiplex.py), routing
by model id in ReplicaSlots, and per-id batches."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import dagserve
from dagserve import GraphError, ModelIdError
from dagserve.runtime.batching import Batcher
from dagserve.runtime.multiplex import attach_cache, check_model_id, model_report, take_model_id
from dagserve.runtime.replica_slots import ReplicaSlots


class Model:
    def __init__(self, mid: str, released: list[str]) -> None:
        self.mid = mid
        self.released = released

    def close(self) -> None:
        self.released.append(self.mid)


class AsyncHost:
    def __init__(self) -> None:
        self.loads: list[str] = []
        self.released: list[str] = []
        self.gate: asyncio.Event | None = None

    @dagserve.multiplexed(max_models_per_replica=2)
    async def load(self, model_id: str) -> Model:
        self.loads.append(model_id)
        if self.gate is not None:
            await self.gate.wait()
        if model_id.startswith("bad"):
            raise ValueError(f"no weights for {model_id}")
        return Model(model_id, self.released)


class UnloadingHost:
    def __init__(self) -> None:
        self.loads: list[str] = []
        self.unloaded: list[tuple[str, str]] = []
        self.release = threading.Event()

    @dagserve.multiplexed(max_models_per_replica=1)
    def load(self, model_id: str) -> Model:
        self.loads.append(model_id)
        self.release.wait(10)
        return Model(model_id, [])

    async def unload(self, model_id: str, model: Model) -> None:
        self.unloaded.append((model_id, model.mid))


async def test_the_cache_keeps_the_least_recently_used_out_past_its_bound_and_closes_it() -> None:
    host = AsyncHost()
    a = await host.load("a")
    await host.load("b")
    assert await host.load("a") is a  # a hit: now b is the least recently used
    await host.load("c")
    report = model_report(host)
    assert report is not None
    assert report["held"] == ["a", "c"]
    assert host.released == ["b"]
    assert (report["loads"], report["evictions"], report["hits"], report["misses"]) == (3, 1, 1, 3)
    assert host.loads == ["a", "b", "c"]


async def test_concurrent_calls_for_one_id_wait_for_one_load() -> None:
    host = AsyncHost()
    host.gate = asyncio.Event()
    calls = [asyncio.ensure_future(host.load("a")) for _ in range(20)]
    await asyncio.sleep(0.01)
    host.gate.set()
    models = await asyncio.gather(*calls)
    assert host.loads == ["a"]
    assert all(m is models[0] for m in models)


async def test_a_failed_load_is_not_cached_and_its_error_is_the_callers() -> None:
    host = AsyncHost()
    host.gate = asyncio.Event()
    calls = [asyncio.ensure_future(host.load("bad1")) for _ in range(3)]
    await asyncio.sleep(0.01)
    host.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert host.loads == ["bad1"]  # one load, its error given to every caller waiting
    with pytest.raises(ValueError, match="no weights for bad1"):
        await host.load("bad1")  # retried, not cached
    assert host.loads == ["bad1", "bad1"]
    report = model_report(host)
    assert report is not None and report["held"] == [] and report["failures"] == 2


async def test_a_cancelled_load_lets_the_waiting_calls_load_it_themselves() -> None:
    host = AsyncHost()
    host.gate = asyncio.Event()
    first = asyncio.ensure_future(host.load("a"))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(host.load("a"))
    await asyncio.sleep(0.01)
    first.cancel()  # its request timed out: the load goes with it
    await asyncio.sleep(0.01)
    host.gate.set()
    model = await second
    assert model.mid == "a"
    assert host.loads == ["a", "a"]


def test_a_sync_loader_loads_once_across_threads_and_unload_releases_instead_of_close() -> None:
    host = UnloadingHost()
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(host.load("a"))) for _ in range(8)]
    for t in threads:
        t.start()
    host.release.set()
    for t in threads:
        t.join(10)
    assert host.loads == ["a"]
    assert len(results) == 8 and all(r is results[0] for r in results)
    host.load("b")  # one slot: "a" goes, through the class's async unload
    assert host.unloaded == [("a", "a")]
    report = model_report(host)
    assert report is not None and report["held"] == ["b"]


async def test_ids_report_loading_models_and_changes_are_told() -> None:
    host = AsyncHost()
    told: list[frozenset[str]] = []
    cache = attach_cache(host, "load", None)
    cache.on_change = lambda: told.append(cache.ids())
    host.gate = asyncio.Event()
    call = asyncio.ensure_future(host.load("a"))
    await asyncio.sleep(0.01)
    assert cache.ids() == {"a"}  # loading counts: calls for it are best sent here
    host.gate.set()
    await call
    assert told == [frozenset({"a"}), frozenset({"a"})]


async def test_the_current_model_id_is_the_default_and_a_bad_one_is_refused() -> None:
    host = AsyncHost()
    with pytest.raises(ModelIdError, match="without a model id"):
        await host.load()
    from dagserve.runtime.multiplex import reset_model_id, set_model_id

    token = set_model_id("z")
    try:
        assert dagserve.model_id() == "z"
        assert (await host.load()).mid == "z"
    finally:
        reset_model_id(token)
    assert dagserve.model_id() is None


@pytest.mark.parametrize(
    ("value", "why"),
    [("", "empty"), ("x" * 257, "257 characters long"), ("a\nb", "not printable"), (7, "a int"), (None, "a NoneType")],
)
def test_a_model_id_is_a_short_printable_string(value: Any, why: str) -> None:
    with pytest.raises(ModelIdError, match=why) as caught:
        check_model_id(value, "Tenants")
    assert caught.value.status_code == 422
    assert caught.value.node == "Tenants"
    assert caught.value.errors[0]["loc"] == ["model_id"]
    assert check_model_id("x" * 256, "Tenants") == "x" * 256
    assert check_model_id("tenant 7/é", "Tenants") == "tenant 7/é"


def test_the_decorator_checks_its_bound_and_the_loader_shape() -> None:
    with pytest.raises(GraphError, match="at least 1"):
        dagserve.multiplexed(max_models_per_replica=0)
    with pytest.raises(GraphError, match=r"takes \(self, model_id\)"):

        class Wrong:
            @dagserve.multiplexed(max_models_per_replica=2)
            def load(self) -> None: ...


def test_take_model_id_leaves_the_callers_keywords_alone() -> None:
    kwargs = {"model_id": "a", "k": 1}
    rest, mid = take_model_id(kwargs)
    assert (rest, mid, kwargs) == ({"k": 1}, "a", {"model_id": "a", "k": 1})
    assert take_model_id({"k": 1}) == ({"k": 1}, None)


# -- routing by model id ---------------------------------------------------------------------------


class Slot:
    def __init__(self, name: str, models: set[str] = frozenset(), ongoing: int = 0) -> None:  # type: ignore[assignment]
        self.name = name
        self.models = frozenset(models)
        self.ongoing = ongoing
        self.takes_calls = True


def _slots(*replicas: Slot, max_ongoing: int = 4) -> ReplicaSlots[Slot, Any]:
    slots: ReplicaSlots[Slot, Any] = ReplicaSlots(lambda w, r: None, max_ongoing=max_ongoing, max_queued=None)
    slots.replicas = list(replicas)
    return slots


def test_a_call_goes_to_a_holder_of_its_model_with_room() -> None:
    a, b = Slot("a", {"m"}, ongoing=3), Slot("b", set(), ongoing=0)
    assert _slots(a, b).pick("m") is a  # busier, but it holds the model
    a.ongoing = 4  # full: the model is loaded elsewhere
    assert _slots(a, b).pick("m") is b


def test_a_model_nobody_holds_goes_to_the_replica_holding_fewest_then_least_busy_and_is_noted() -> None:
    a, b, c = Slot("a", {"x", "y"}), Slot("b", {"z"}, ongoing=2), Slot("c", {"w"}, ongoing=1)
    slots = _slots(a, b, c)
    chosen = slots.pick("m")
    assert chosen is c
    assert c.models == {"w", "m"}  # the next call for m follows before c reports
    assert slots.pick("m") is c


def test_ties_on_models_and_calls_are_broken_at_random() -> None:
    seen = set()
    for _ in range(200):
        a, b = Slot("a"), Slot("b")
        seen.add(_slots(a, b).pick("m").name)  # type: ignore[union-attr]
    assert seen == {"a", "b"}


def test_every_replica_full_means_wait() -> None:
    a = Slot("a", {"m"}, ongoing=4)
    slots = _slots(a)
    assert slots.for_new_call("m") is None


# -- per-id batches ----------------------------------------------------------------------------------


async def test_a_batch_never_mixes_model_ids_and_sees_its_own() -> None:
    seen: list[tuple[str | None, list[str]]] = []

    async def run(items: list[str]) -> list[str]:
        seen.append((dagserve.model_id(), list(items)))
        await asyncio.sleep(0.01)
        return [f"{dagserve.model_id()}:{i}" for i in items]

    b = Batcher("n", run, max_batch_size=8, wait_s=0.02)
    calls = [b.submit(f"{m}{i}", m) for i in range(5) for m in ("a", "b")]
    results = await asyncio.gather(*calls)
    assert results == [f"{m}:{m}{i}" for i in range(5) for m in ("a", "b")]
    for mid, items in seen:
        assert items and all(item.startswith(str(mid)) for item in items)
    assert {mid for mid, _ in seen} == {"a", "b"}
