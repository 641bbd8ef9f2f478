"""ray-core: a plain Starlette app doing pre/post in-process and the model step in a plain async Ray actor."""

from __future__ import annotations

import logging
from typing import Any

from benchmarks.servers import work
from benchmarks.servers._cli import exit_on_sigterm, fail, parse_args
from benchmarks.servers._starlette import Compute, build_app, serve_forever
from benchmarks.servers.ray_runtime import start_ray

SUPPORTED = ("chain",)


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

        actor = Model.remote()  # type: ignore[attr-defined]
        ray.get(actor.model.remote(0))  # the actor is up before we listen

        async def chain(x: int) -> dict[str, Any]:
            n = await actor.model.remote(work.pre(x))
            return work.post(n)

        computes: dict[str, Compute] = {"chain": chain}
        exit_on_sigterm()
        serve_forever(build_app(computes), args.port)
    finally:
        ray.shutdown()
        logging.shutdown()


if __name__ == "__main__":
    main()
