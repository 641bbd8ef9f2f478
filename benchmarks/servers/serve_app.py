"""serve-docs / serve-tuned: the workloads as hand-written Ray Serve applications behind Serve's proxy.

``--flavor docs`` keeps Serve's defaults (max_ongoing_requests included); ``--flavor tuned`` sets
max_ongoing_requests=1000 on every deployment and RAY_SERVE_THROUGHPUT_OPTIMIZED=1 for every Ray
process. Every deployment asks for num_cpus=0 (Serve's default of 1 would leave replicas pending
on a 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from benchmarks.servers._cli import HOST, announce_ready, exit_on_sigterm, fail, parse_args
from benchmarks.servers.ray_runtime import start_ray

TUNED_MAX_ONGOING_REQUESTS = 1000


def _add_flavor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flavor", choices=("docs", "tuned"), required=True)


def deployment_options(flavor: str) -> dict[str, Any]:
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}}
    if flavor == "tuned":
        options["max_ongoing_requests"] = TUNED_MAX_ONGOING_REQUESTS
    return options


def main() -> None:
    args, workloads = parse_args(__doc__ or "", _add_flavor)
    tuned = args.flavor == "tuned"
    # Read once, when ray.serve._private.constants is imported: set it before importing ray.
    # Ray's worker processes inherit this environment from the driver.
    if tuned:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        # Throughput-optimized Serve turns on direct ingress, which holds ingress replicas open
        # for 30 s at shutdown so external load balancers can deregister them. There are none
        # here; without this every teardown would idle 40 s. No effect while serving.
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0")
    else:
        os.environ.pop("RAY_SERVE_THROUGHPUT_OPTIMIZED", None)

    import ray
    from ray import serve
    from ray.serve._private import constants
    from ray.serve.api import RunTarget

    from benchmarks.servers.serve_graphs import build_application

    if constants.RAY_SERVE_THROUGHPUT_OPTIMIZED != tuned:
        fail(f"RAY_SERVE_THROUGHPUT_OPTIMIZED is {constants.RAY_SERVE_THROUGHPUT_OPTIMIZED}, expected {tuned}")

    start_ray()
    try:
        serve.start(http_options={"host": HOST, "port": args.port})
        options = deployment_options(args.flavor)
        # One application per case, deployed together (serve.run one by one is ~2-8 s each).
        serve.run_many(
            [
                RunTarget(build_application(w, case, options), name=case.name, route_prefix=case.path)
                for w in workloads
                for case in w.cases
            ]
        )
        exit_on_sigterm()
        announce_ready(args.port)
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
