"""Many models per node: cache hit ratio, loads and throughput of a multiplexed node, against
routing blind to the model and hand-written Ray Serve with ``@serve.multiplexed``.

``python -m benchmarks.multiplex_bench [--requests 4000] [--ids 32] [--concurrency 32]``

The workload (docs/multiplexing.md#performance): a loader that takes ``LOAD_S`` (a simulated
weight load, ``asyncio.sleep``), ``REPLICAS`` replicas x ``SLOTS`` models each, ``--ids`` model
ids drawn from a Zipf(``ZIPF_S``) distribution (the same seeded sequence for every system),
``--concurrency`` requests in flight from one client in this process. Three systems on one local
Ray (started here with dagserve's settings, Serve's throughput-optimized mode on), one after
the other, replicas at ``num_cpus=0``:

* ``dagserve``: :class:`Tenant`, ``@dagserve.multiplexed``, called with ``app.acall`` (calls go
  over the direct transport to the replica holding the model, docs/multiplexing.md#routing);
* ``blind``: :class:`Blind`, the same replicas and the same LRU of ``SLOTS`` models per replica,
  but a plain node: dagserve routes its calls to the least busy replica, blind to the model id
  (what routing without multiplexing does). Its loads are the "random routing" baseline; the
  loads uniform random routing would make on the same sequence are also computed
  (:func:`simulate_random`);
* ``serve``: a hand-written Ray Serve deployment with ``@serve.multiplexed``, called through a
  ``DeploymentHandle`` with ``.options(multiplexed_model_id=...)``.

Each system first takes ``--warmup`` requests (not counted), then the measured run: requests/s,
loads (each system's own counters) and hit ratio, for all three ``1 - loads / requests`` (a
request served by a model loaded, or being loaded for another request, is a hit). The throughput
of all three is bound by how long requests wait for loads, so it grows with ``--concurrency``. Records go to
``benchmarks/results/multiplex.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import platform
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import dagserve

RESULTS = Path(__file__).resolve().parent / "results" / "multiplex.json"
LOAD_S = 0.05
REPLICAS = 4
SLOTS = 4
ZIPF_S = 1.1
SEED = 28


def zipf_ids(n_ids: int, n: int, seed: int = SEED, s: float = ZIPF_S) -> list[str]:
    """``n`` model ids out of ``n_ids``, id k (1-based) drawn with weight 1/k^s."""
    rng = random.Random(seed)
    ids = [f"m{k:02d}" for k in range(1, n_ids + 1)]
    return rng.choices(ids, weights=[1 / k**s for k in range(1, n_ids + 1)], k=n)


def simulate_random(sequence: list[str], replicas: int = REPLICAS, slots: int = SLOTS, seed: int = SEED) -> int:
    """Loads that uniform random routing makes on ``sequence`` (one request at a time, an LRU of
    ``slots`` models per replica)."""
    rng = random.Random(seed)
    caches: list[collections.OrderedDict[str, None]] = [collections.OrderedDict() for _ in range(replicas)]
    loads = 0
    for mid in sequence:
        cache = caches[rng.randrange(replicas)]
        if mid in cache:
            cache.move_to_end(mid)
            continue
        loads += 1
        cache[mid] = None
        if len(cache) > slots:
            cache.popitem(last=False)
    return loads


def best_hit_ratio(sequence: list[str], slots: int) -> float:
    """The highest hit ratio (``1 - loads / requests``) any cache of ``slots`` models can have on
    ``sequence`` served one request at a time: Belady's clairvoyant policy (evict the model needed
    again furthest in the future) with every slot of every replica in one cache. Replicas with
    caches of their own, routing, or a policy that cannot see the future do no better. (With
    requests in flight together, one that shares another's load counts as a hit too: a concurrent
    run may beat this bound by that much.)"""
    next_use = [0] * len(sequence)
    seen: dict[str, int] = {}
    for i in range(len(sequence) - 1, -1, -1):
        next_use[i] = seen.get(sequence[i], len(sequence))
        seen[sequence[i]] = i
    held: dict[str, int] = {}  # model -> the next request for it
    hits = 0
    for i, mid in enumerate(sequence):
        if mid in held:
            hits += 1
        elif len(held) >= slots:
            del held[max(held, key=held.__getitem__)]
        held[mid] = next_use[i]
    return hits / max(1, len(sequence))


# -- the systems -------------------------------------------------------------------------------------


@dagserve.node(num_replicas=REPLICAS, max_ongoing_requests=1000)
class Tenant:
    @dagserve.multiplexed(max_models_per_replica=SLOTS)
    async def load(self, model_id: str) -> str:
        await asyncio.sleep(LOAD_S)
        return model_id

    async def __call__(self, x: int) -> str:
        return await self.load(dagserve.model_id())


@dagserve.node(num_replicas=REPLICAS, max_ongoing_requests=1000)
class Blind:
    """The same cache (one load per id at a time, LRU of SLOTS), as a plain node: calls are routed
    without regard to the model. Answers ``(model id, whether this call loaded it)``."""

    def __init__(self) -> None:
        self.models: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.loading: dict[str, asyncio.Future[str]] = {}

    async def __call__(self, req: dict[str, Any]) -> tuple[str, bool]:
        mid = req["id"]
        if mid in self.models:
            self.models.move_to_end(mid)
            return mid, False
        pending = self.loading.get(mid)
        if pending is not None:
            return await asyncio.shield(pending), False
        pending = self.loading[mid] = asyncio.get_running_loop().create_future()
        while len(self.models) + len(self.loading) > SLOTS and self.models:
            self.models.popitem(last=False)
        await asyncio.sleep(LOAD_S)
        self.models[mid] = mid
        del self.loading[mid]
        pending.set_result(mid)
        return mid, True


with dagserve.Input() as inp:
    multiplexed_graph = dagserve.Graph(Tenant()(inp["x"], model_id=inp["id"]), name="multiplex_bench")
    blind_graph = dagserve.Graph(Blind()(inp), name="multiplex_blind")


async def drive(call: Callable[[int, str], Awaitable[Any]], sequence: list[str], concurrency: int) -> float:
    """Send ``sequence`` with at most ``concurrency`` in flight; the seconds it took."""
    todo = iter(enumerate(sequence))

    async def worker() -> None:
        for i, mid in todo:
            await call(i, mid)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


def _models(app: dagserve.App, node: str) -> dict[str, Any]:
    time.sleep(1.5)  # Ray replicas send their counters about once a second
    return dict(app.status().nodes[node].models)


def run_dagserve(warmup: list[str], sequence: list[str], concurrency: int) -> dict[str, Any]:
    with dagserve.deploy(multiplexed_graph, backend="ray", ready_timeout_s=300) as app:

        async def call(i: int, mid: str) -> Any:
            return await app.acall({"x": i, "id": mid})

        asyncio.run(drive(call, warmup, concurrency))
        before = _models(app, "Tenant")
        seconds = asyncio.run(drive(call, sequence, concurrency))
        after = _models(app, "Tenant")
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    return {
        "system": "dagserve", "seconds": seconds, "loads": after["loads"] - before["loads"],
        "hit_ratio": hits / max(1, hits + misses),  # status's: 1 - loads/calls
    }


def run_blind(warmup: list[str], sequence: list[str], concurrency: int) -> dict[str, Any]:
    with dagserve.deploy(blind_graph, backend="ray", ready_timeout_s=300) as app:
        loads = [0]

        async def call(i: int, mid: str) -> Any:
            _, loaded = await app.acall({"x": i, "id": mid})
            loads[0] += loaded

        asyncio.run(drive(call, warmup, concurrency))
        loads[0] = 0
        seconds = asyncio.run(drive(call, sequence, concurrency))
    return {"system": "blind", "seconds": seconds, "loads": loads[0], "hit_ratio": 1 - loads[0] / len(sequence)}


def run_serve(warmup: list[str], sequence: list[str], concurrency: int) -> dict[str, Any]:
    from ray import serve

    @serve.deployment(num_replicas=REPLICAS, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
    class ServeTenant:
        def __init__(self) -> None:
            self.loads = 0
            self.calls = 0

        @serve.multiplexed(max_num_models_per_replica=SLOTS)
        async def get_model(self, model_id: str) -> str:
            self.loads += 1
            await asyncio.sleep(LOAD_S)
            return model_id

        async def __call__(self, x: int) -> str:
            self.calls += 1
            return await self.get_model(serve.get_multiplexed_model_id())

        def counts(self) -> tuple[int, int]:
            return self.loads, self.calls

    handle = serve.run(ServeTenant.bind(), name="multiplex_serve", route_prefix=None)
    try:

        async def call(i: int, mid: str) -> Any:
            return await handle.options(multiplexed_model_id=mid).remote(i)

        async def both() -> tuple[float, list[Any], list[Any]]:
            await drive(call, warmup, concurrency)
            before = await handle.broadcast("counts").results_async()
            seconds = await drive(call, sequence, concurrency)
            after = await handle.broadcast("counts").results_async()
            return seconds, before, after

        seconds, before, after = asyncio.run(both())
    finally:
        serve.delete("multiplex_serve")
    loads = sum(a[0] for a in after) - sum(b[0] for b in before)
    return {"system": "serve", "seconds": seconds, "loads": loads, "hit_ratio": 1 - loads / len(sequence)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.multiplex_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ids", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64)
    systems = ["dagserve", "blind", "serve"]
    parser.add_argument("--systems", nargs="+", default=systems, choices=systems)
    args = parser.parse_args(argv)
    from dagserve.backends.ray.cluster import start_local_ray

    start_local_ray(num_cpus=2)
    sequence = zipf_ids(args.ids, args.warmup + args.requests)
    warmup, measured = sequence[: args.warmup], sequence[args.warmup :]
    runners = {"dagserve": run_dagserve, "blind": run_blind, "serve": run_serve}
    rows = []
    for system in args.systems:
        row = runners[system](warmup, measured, args.concurrency)
        row["req_s"] = len(measured) / row["seconds"]
        rows.append(row)
        line = f"{system:<9} {row['req_s']:>8.0f} req/s  loads {row['loads']:>5}  hit ratio {row['hit_ratio']:.3f}"
        print(line, flush=True)
    random_loads = simulate_random(measured)
    print(f"uniform random routing (simulated, one request at a time): {random_loads} loads")
    # The measured requests start from the cache the warm-up left: at best it holds the first
    # models they need, which saves at most one load per slot over starting empty.
    slots = REPLICAS * SLOTS
    best = min(1.0, best_hit_ratio(measured, slots) + slots / len(measured))
    print(f"the best any cache of {slots} slots could do one request at a time (Belady, clairvoyant, warm): "
          f"hit ratio <= {best:.3f}")
    by = {r["system"]: r for r in rows}
    if "dagserve" in by and "blind" in by:
        print(f"dagserve loads / blind routing loads: {by['dagserve']['loads'] / max(1, by['blind']['loads']):.2f}")
    if "dagserve" in by and "serve" in by:
        print(f"dagserve throughput / Serve's: {by['dagserve']['req_s'] / by['serve']['req_s']:.1f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.platform(),
        "load_s": LOAD_S, "replicas": REPLICAS, "slots": SLOTS, "ids": args.ids, "zipf_s": ZIPF_S,
        "requests": args.requests, "concurrency": args.concurrency, "rows": rows,
        "simulated_random_loads": random_loads, "best_possible_hit_ratio": best,
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
