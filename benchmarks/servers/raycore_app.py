"""ray-core: a plain Starlette app calling plain async Ray actors, with nothing on top.

* ``chain``: pre and post in-process, the model step in one actor (one Ray hop per request).
* ``hop``: one actor per step, called one after the other (N hops): the cost of a bare Ray actor
  call at concurrency 1, the floor under any graph whose steps live in other processes.
* ``batched``: one actor holding the 20 ms device, with a minimal batch loop of its own (take
  whatever queued while the last batch ran, up to MAX_BATCH): the most one bare Ray hop per request
  lets batching reach on this machine.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from benchmarks.servers import work
from benchmarks.servers._cli import exit_on_sigterm, fail, parse_args
from benchmarks.servers._starlette import Compute, build_app, serve_forever
from benchmarks.servers.ray_runtime import start_ray
from benchmarks.workloads import MAX_BATCH

#: How long the first request of an idle batcher waits for company (as dagserve_app's node).
BATCH_WAIT_S = 0.005

SUPPORTED = ("chain", "hop", "batched")


def main() -> None:
    args, workloads = parse_args(__doc__ or "")
    unsupported = [w.name for w in workloads if w.name not in SUPPORTED]
    if unsupported:
        fail(f"ray-core does not serve {unsupported!r}; it serves {', '.join(SUPPORTED)}")

    import ray

    start_ray()
    try:

        @ray.remote(num_cpus=0)
        class Model:
            async def model(self, n: int) -> int:
                return work.model(n)

        @ray.remote(num_cpus=0)
        class Step:
            async def step(self, n: int) -> int:
                return work.step(n)

        @ray.remote(num_cpus=0)
        class BatchedDevice:
            def __init__(self) -> None:
                self.device = work.Device()
                self.queue: list[tuple[int, asyncio.Future[Any]]] = []
                self.busy = False

            async def batched(self, x: int) -> Any:
                fut = asyncio.get_running_loop().create_future()
                self.queue.append((x, fut))
                if not self.busy:
                    self.busy = True
                    asyncio.ensure_future(self._drain())
                return await fut

            async def _drain(self) -> None:
                try:
                    await asyncio.sleep(BATCH_WAIT_S)
                    while self.queue:
                        batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                        results = await self.device.run([x for x, _ in batch])
                        for (_, f), r in zip(batch, results, strict=True):
                            f.set_result(r)
                finally:
                    self.busy = False

            async def unbatched(self, x: int) -> Any:
                return (await self.device.run([x]))[0]

        computes: dict[str, Compute] = {}
        for workload in workloads:
            if workload.name == "chain":
                actor = Model.remote()  # type: ignore[attr-defined]
                ray.get(actor.model.remote(0))  # the actor is up before we listen

                async def chain(x: int, actor: Any = actor) -> dict[str, Any]:
                    n = await actor.model.remote(work.pre(x))
                    return work.post(n)

                computes["chain"] = chain
            elif workload.name == "batched":
                for case in workload.cases:
                    device = BatchedDevice.remote()  # type: ignore[attr-defined]
                    method = device.batched if case.batching else device.unbatched
                    ray.get(method.remote(0))

                    async def run_device(x: int, method: Any = method) -> dict[str, Any]:
                        return await method.remote(x)

                    computes[case.name] = run_device
            else:  # hop: one actor per step, like one deployment per node
                for case in workload.cases:
                    assert case.hops is not None
                    steps = [Step.remote() for _ in range(case.hops)]  # type: ignore[attr-defined]
                    ray.get([s.step.remote(0) for s in steps])

                    async def hops(x: int, steps: list[Any] = steps) -> dict[str, Any]:
                        for s in steps:
                            x = await s.step.remote(x)
                        return work.post(x)

                    computes[case.name] = hops
        exit_on_sigterm()
        serve_forever(build_app(computes), args.port)
    finally:
        ray.shutdown()
        logging.shutdown()


if __name__ == "__main__":
    main()
