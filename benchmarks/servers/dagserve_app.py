"""The dagserve systems: every workload as a dagserve graph, served by ``dagserve.serve``.

    python -m benchmarks.servers.dagserve_app --workload chain[,hop,...] --port P \\
        --backend ray|local [--inline] [--def]

Each case is one graph named after it, so ``POST /<case>`` runs it. Nodes call the same code as
every other system (benchmarks/servers/work.py) and use dagserve's default options unless the
workload is about an option (batching, replicas). ``--inline`` makes the business-logic nodes
(pre/post/combine) run inside the ingress process, leaving only the model steps as deployments.
``--def`` writes every node as plain ``def`` code (as users mostly do; model code is usually
synchronous) instead of ``async def``: same work, blocking waits where the async nodes await.
"""

from __future__ import annotations

import argparse
from typing import Any

import dagserve
from benchmarks.servers import work
from benchmarks.servers._cli import HOST, announce_ready, exit_on_sigterm, fail, parse_args
from benchmarks.workloads import FANOUT_BRANCHES, MAX_BATCH, Case, Workload

SUPPORTED = ("chain", "hop", "batched", "fanout", "replicas")


# Business logic: trivial, so written as async functions (no thread hop for sync code).
@dagserve.node
async def pre(x: int) -> int:
    return work.pre(x)


@dagserve.node
async def model(x: int) -> int:
    return work.model(x)


@dagserve.node
async def post(x: int) -> dict[str, Any]:
    return work.post(x)


@dagserve.node
async def step(x: int) -> int:
    return work.step(x)


@dagserve.node
async def branch(x: int, i: int) -> int:
    return await work.branch(x, i)


@dagserve.node
async def combine(values: list[int]) -> dict[str, Any]:
    return work.combine(values)


@dagserve.node
def burn(x: int) -> dict[str, Any]:
    return work.burn(x)


@dagserve.node(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.005)
class BatchedDevice:
    def __init__(self) -> None:
        self.device = work.Device()

    async def __call__(self, xs: list[int]) -> list[dict[str, Any]]:
        return await self.device.run(xs)


@dagserve.node
class Device:
    def __init__(self) -> None:
        self.device = work.Device()

    async def __call__(self, x: int) -> dict[str, Any]:
        return (await self.device.run([x]))[0]


# The same nodes as plain ``def`` code (``--def``), under the same names.
@dagserve.node(name="pre")
def pre_def(x: int) -> int:
    return work.pre(x)


@dagserve.node(name="model")
def model_def(x: int) -> int:
    return work.model(x)


@dagserve.node(name="post")
def post_def(x: int) -> dict[str, Any]:
    return work.post(x)


@dagserve.node(name="step")
def step_def(x: int) -> int:
    return work.step(x)


@dagserve.node(name="branch")
def branch_def(x: int, i: int) -> int:
    return work.branch_sync(x, i)


@dagserve.node(name="combine")
def combine_def(values: list[int]) -> dict[str, Any]:
    return work.combine(values)


@dagserve.node(name="BatchedDevice", max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.005)
class BatchedDeviceDef:
    def __init__(self) -> None:
        self.device = work.SyncDevice()

    def __call__(self, xs: list[int]) -> list[dict[str, Any]]:
        return self.device.run(xs)


@dagserve.node(name="Device")
class DeviceDef:
    def __init__(self) -> None:
        self.device = work.SyncDevice()

    def __call__(self, x: int) -> dict[str, Any]:
        return self.device.run([x])[0]


ASYNC_NODES = (pre, model, post, step, branch, combine, BatchedDevice, Device)
DEF_NODES = (pre_def, model_def, post_def, step_def, branch_def, combine_def, BatchedDeviceDef, DeviceDef)


def graph_for(workload: Workload, case: Case, inline: bool, sync: bool = False) -> dagserve.Graph:
    pre, model, post, step, branch, combine, BatchedDevice, Device = DEF_NODES if sync else ASYNC_NODES  # noqa: N806
    logic = {"inline": True} if inline else {}
    p, po, co = pre.options(**logic), post.options(**logic), combine.options(**logic)
    with dagserve.Input() as inp:
        x = inp["x"]
        if workload.name == "chain":
            out = po(model(p(x)))
        elif workload.name == "hop":
            assert case.hops is not None
            for k in range(case.hops):
                x = step.options(name=f"step{k + 1}")(x)
            out = post.options(inline=True)(x)  # the ingress answers, as in the Serve version
        elif workload.name == "batched":
            out = (BatchedDevice() if case.batching else Device())(x)
        elif workload.name == "fanout":
            out = co([branch(x, i) for i in range(FANOUT_BRANCHES)])
        elif workload.name == "replicas":
            assert case.replicas is not None
            out = burn.options(num_replicas=case.replicas, name=f"burn{case.replicas}")(x)
        else:
            fail(f"dagserve_app does not serve workload {workload.name!r}; it serves {', '.join(SUPPORTED)}")
    return dagserve.Graph(out, name=case.name)


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("ray", "local"), required=True)
    parser.add_argument("--inline", action="store_true", help="run the business-logic nodes inline")
    parser.add_argument("--def", dest="sync", action="store_true", help="nodes as plain def, not async def")


def main() -> None:
    args, workloads = parse_args(__doc__ or "", _add_options)
    graphs = [graph_for(w, case, args.inline, args.sync) for w in workloads for case in w.cases]
    exit_on_sigterm()
    dagserve.serve(
        graphs,
        host=HOST,
        port=args.port,
        backend=args.backend,
        log_level="warning",
        on_ready=lambda url: announce_ready(args.port),
    )


if __name__ == "__main__":
    main()
