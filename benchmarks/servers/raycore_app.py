"""ray-core: a plain Starlette app calling plain async Ray actors, with nothing on top.

* ``chain``: pre and post in-process, the model step in one actor (one Ray hop per request).
* ``hop``: one actor per step, called one after the other (N hops): the cost of a bare Ray actor
  call at concurrency 1, the floor under any graph whose steps live in other processes.
"""

from __future__ import annotations

import logging
from typing import Any

from benchmarks.servers import work
from benchmarks.servers._cli import exit_on_sigterm, fail, parse_args
from benchmarks.servers._starlette import Compute, build_app, serve_forever
from benchmarks.servers.ray_runtime import start_ray

SUPPORTED = ("chain", "hop")


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

        computes: dict[str, Compute] = {}
        for workload in workloads:
            if workload.name == "chain":
                actor = Model.remote()  # type: ignore[attr-defined]
                ray.get(actor.model.remote(0))  # the actor is up before we listen

                async def chain(x: int, actor: Any = actor) -> dict[str, Any]:
                    n = await actor.model.remote(work.pre(x))
                    return work.post(n)

                computes["chain"] = chain
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
