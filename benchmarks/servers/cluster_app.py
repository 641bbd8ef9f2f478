"""The ``cluster`` workload: the work spread over a two-raylet Ray cluster on this host.

    python -m benchmarks.servers.cluster_app --workload cluster --port P --system dagserve|serve-tuned

The server makes its own cluster (``ray.cluster_utils.Cluster``, loopback only, token
authentication on): a head node offering the custom resource ``near``, where the ingress runs,
and a second raylet offering ``far``. Ray treats the second raylet as another machine, so calls to
it take the cross-node paths (dagserve: TCP with the token handshake; Serve: its gRPC). Each case
pins its model, steps or branches to ``near`` or ``far`` (``*-near`` / ``*-far`` cases); the
business logic (pre, post, combine) stays near the ingress. ``dagserve``: the graphs served by
``dagserve.serve`` joined to the cluster, default options. ``serve-tuned``: hand-written Serve
applications (benchmarks/servers/serve_graphs.py) with max_ongoing_requests=1000 and
RAY_SERVE_THROUGHPUT_OPTIMIZED=1, one HTTP proxy on the head node.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.servers._cli import HOST, announce_ready, exit_on_sigterm, fail, parse_args
from benchmarks.workloads import FANOUT_BRANCHES, Case

#: Logical CPUs of each Ray node (every actor and deployment here asks for none).
NODE_CPUS = 2


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--system", choices=("dagserve", "serve-tuned"), required=True)


def side(case: Case) -> dict[str, float]:
    """The resource pinning a case's remote work to the near or the far Ray node."""
    return {"far" if case.name.endswith("-far") else "near": 0.01}


@contextmanager
def two_node_cluster() -> Iterator[Any]:
    """A head (``near``) and a second raylet (``far``) on 127.0.0.1, with token authentication."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
    import ray
    from ray import cluster_utils
    from ray._raylet import Config

    from dagserve.backends.ray.cluster import _loopback_only

    Config.initialize("")
    ray._private.utils.write_ray_address = lambda *a, **k: None  # no other process joins it by accident
    for attempt in (1, 2):  # a head node may time out starting on a loaded machine: once more
        try:
            with _loopback_only():
                cluster = cluster_utils.Cluster(
                    initialize_head=True,
                    head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False, "resources": {"near": 1}},
                )
                cluster.add_node(num_cpus=NODE_CPUS, resources={"far": 1})
            break
        except Exception as exc:  # noqa: BLE001 - raised as it is the second time
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
            print(f"the cluster did not start ({exc}); starting it once more", flush=True)
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def dagserve_graphs(cases: list[Case]) -> list[Any]:
    import dagserve
    from benchmarks.servers.dagserve_app import BatchedDevice, branch, combine, model, post, pre, step

    graphs = []
    for case in cases:
        where = {"resources": side(case)}
        with dagserve.Input() as inp:
            x = inp["x"]
            if "-chain-" in case.name:
                out = post(model.options(**where)(pre(x)))
            elif "-hop-" in case.name:
                out = post.options(inline=True)(step.options(**where)(x))
            elif "-fanout-" in case.name:
                out = combine([branch.options(**where)(x, i) for i in range(FANOUT_BRANCHES)])
            elif "-batched-" in case.name:
                out = BatchedDevice.options(**where)()(x)
            else:
                fail(f"cluster_app: no graph for case {case.name!r}")
        graphs.append(dagserve.Graph(out, name=case.name))
    return graphs


def serve_application(case: Case) -> Any:
    from benchmarks.servers import serve_graphs as g
    from benchmarks.servers.serve_app import TUNED_MAX_ONGOING_REQUESTS

    def opt(deployment: Any, name: str, resources: dict[str, float] | None = None) -> Any:
        actor = {"num_cpus": 0, "resources": resources or {"near": 0.01}}
        return deployment.options(name=name, ray_actor_options=actor, max_ongoing_requests=TUNED_MAX_ONGOING_REQUESTS)

    there = side(case)
    if "-chain-" in case.name:
        return opt(g.ChainIngress, "ingress").bind(
            opt(g.Pre, "pre").bind(), opt(g.Model, "model", there).bind(), opt(g.Post, "post").bind()
        )
    if "-hop-" in case.name:
        return opt(g.HopIngress, "ingress").bind(opt(g.Step, "step1", there).bind())
    if "-fanout-" in case.name:
        branches = [opt(g.Branch, f"branch{i}", there).bind(i) for i in range(FANOUT_BRANCHES)]
        return opt(g.FanoutIngress, "ingress").bind(opt(g.Combine, "combine").bind(), *branches)
    if "-batched-" in case.name:
        return opt(g.BatchedModel, "model", there).bind()
    fail(f"cluster_app: no Serve application for case {case.name!r}")


def main() -> None:
    args, workloads = parse_args(__doc__ or "", _add_options)
    cases = [case for w in workloads for case in w.cases]
    if args.system == "serve-tuned":
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"  # before Serve is imported, as serve_app does
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0")
    with two_node_cluster() as cluster:
        exit_on_sigterm()
        if args.system == "dagserve":
            import dagserve

            dagserve.serve(
                dagserve_graphs(cases),
                host=HOST,
                port=args.port,
                backend="ray",
                address=cluster.address,
                log_level="warning",
                on_ready=lambda url: announce_ready(args.port),
            )
            return
        import ray
        from ray import serve
        from ray.serve.api import RunTarget

        from dagserve.backends.ray.cluster import _loopback_only

        with _loopback_only():  # else Ray resolves 127.0.0.1 to the machine's address
            ray.init(address=cluster.address, log_to_driver=False)
        try:
            # One proxy, on the head: a second one on the other raylet would want the same port.
            serve.start(proxy_location="HeadOnly", http_options={"host": HOST, "port": args.port})
            serve.run_many([RunTarget(serve_application(c), name=c.name, route_prefix=c.path) for c in cases])
            announce_ready(args.port)
            while True:
                time.sleep(3600)
        finally:
            serve.shutdown()


if __name__ == "__main__":
    main()
