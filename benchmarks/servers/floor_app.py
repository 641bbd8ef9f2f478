"""floor: the work done in-process in a plain Starlette app; the best a Python server can do."""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks.servers import work
from benchmarks.servers._cli import exit_on_sigterm, fail, parse_args
from benchmarks.servers._starlette import Compute, build_app, serve_forever
from benchmarks.workloads import FANOUT_BRANCHES, Case, Workload

SUPPORTED = ("chain", "hop", "fanout")


async def _chain(x: int) -> dict[str, Any]:
    return work.post(work.model(work.pre(x)))


def _hop(n: int) -> Compute:
    async def compute(x: int) -> dict[str, Any]:
        for _ in range(n):
            x = work.step(x)
        return work.post(x)

    return compute


async def _fanout(x: int) -> dict[str, Any]:
    values = await asyncio.gather(*(work.branch(x, i) for i in range(FANOUT_BRANCHES)))
    return work.combine(list(values))


def compute_for(workload: Workload, case: Case) -> Compute:
    if workload.name == "chain":
        return _chain
    if workload.name == "hop":
        assert case.hops is not None
        return _hop(case.hops)
    if workload.name == "fanout":
        return _fanout
    fail(f"floor does not serve workload {workload.name!r}; it serves {', '.join(SUPPORTED)}")


def main() -> None:
    args, workloads = parse_args(__doc__ or "")
    computes = {case.name: compute_for(w, case) for w in workloads for case in w.cases}
    exit_on_sigterm()
    serve_forever(build_app(computes), args.port)


if __name__ == "__main__":
    main()
