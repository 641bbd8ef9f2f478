"""Ray's plain actor calls on a two-raylet loopback cluster (token auth on): one actor on the
caller's raylet ("near"), one on the other ("far"); sequential p50 and throughput with 64 calls in
flight. A baseline for docs/performance.md#across-ray-nodes (not part of ``make bench``)::

    python -m benchmarks.cluster_actors
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import time
from typing import Any


async def _measure(actor: Any, calls: int = 200, burst: int = 1000, in_flight: int = 64) -> tuple[float, float]:
    for _ in range(50):
        await actor.f.remote(1)
    latencies = []
    for _ in range(calls):
        t = time.perf_counter()
        await actor.f.remote(1)
        latencies.append(time.perf_counter() - t)
    slots = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with slots:
            await actor.f.remote(1)

    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(burst)))
    return statistics.median(latencies) * 1e3, burst / (time.perf_counter() - t)


def main() -> None:
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
    import ray
    from ray import cluster_utils

    from benchmarks.servers.cluster_app import NODE_CPUS
    from dagserve.backends.ray.cluster import _loopback_only

    ray._private.utils.write_ray_address = lambda *a, **k: None
    with _loopback_only():
        c = cluster_utils.Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False, "resources": {"near": 1}},
        )
        c.add_node(num_cpus=NODE_CPUS, resources={"far": 1})
        ray.init(address=c.address, log_to_driver=False)

    @ray.remote(num_cpus=0)
    class Actor:
        async def f(self, x: int) -> int:
            return x + 1

    try:
        for side in ("near", "far"):
            actor = Actor.options(resources={side: 0.01}).remote()
            p50, rate = asyncio.run(_measure(actor))
            print(f"actor {side}: p50 {p50:.3f} ms, {rate:.0f} calls/s with 64 in flight "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        ray.shutdown()
        c.shutdown()


if __name__ == "__main__":
    main()
