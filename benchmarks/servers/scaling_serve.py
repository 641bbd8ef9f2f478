"""The ``scaling`` graphs hand-written in Ray Serve (as serve-tuned: max_ongoing_requests=1000,
RAY_SERVE_THROUGHPUT_OPTIMIZED=1, num_cpus=0), behind Serve's proxy on 127.0.0.1.

    python -m benchmarks.servers.scaling_serve --shape fanout|map --size N --port P

``fanout``: an ingress deployment calling N branch deployments concurrently and summing;
``map``: an ingress calling one ``double`` deployment once per item of ``range(n)``, concurrently.
Prints ``ready on ...`` once ``serve.run`` has returned.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from benchmarks.servers._cli import HOST, announce_ready, exit_on_sigterm
from benchmarks.servers.serve_app import TUNED_MAX_ONGOING_REQUESTS


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shape", choices=("fanout", "map"), required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0")
    import ray
    from ray import serve
    from starlette.requests import Request

    from benchmarks.servers.ray_runtime import start_ray

    opts: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": TUNED_MAX_ONGOING_REQUESTS}

    @serve.deployment(**opts)
    class Branch:
        def __init__(self, i: int) -> None:
            self.i = i

        def __call__(self, x: int) -> int:
            return x + self.i

    @serve.deployment(**opts)
    class FanoutIngress:
        def __init__(self, *branches: Any) -> None:
            self.branches = branches

        async def __call__(self, request: Request) -> int:
            x = (await request.json())["x"]
            return sum(await asyncio.gather(*(b.remote(x) for b in self.branches)))

    @serve.deployment(**opts)
    class Double:
        def __call__(self, i: int) -> int:
            return 2 * i

    @serve.deployment(**opts)
    class MapIngress:
        def __init__(self, double: Any) -> None:
            self.double = double

        async def __call__(self, request: Request) -> list[int]:
            n = (await request.json())["n"]
            return list(await asyncio.gather(*(self.double.remote(i) for i in range(n))))

    if args.shape == "fanout":
        app = FanoutIngress.bind(*(Branch.options(name=f"branch{i}").bind(i) for i in range(args.size)))
    else:
        app = MapIngress.bind(Double.bind())
    start_ray()
    try:
        serve.start(http_options={"host": HOST, "port": args.port})
        serve.run(app, route_prefix="/")
        exit_on_sigterm()
        announce_ready(args.port)
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
