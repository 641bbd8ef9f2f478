"""The benchmark workloads: what is asked of every system, and the answer it must give.

A *workload* is a group of *cases* measured together (``hop`` has ``hop1``, ``hop3``, ``hop6``).
A server started for a workload serves every case of it, each on its own path ``/<case>``,
answering ``POST`` with the case's JSON body. Every system must return exactly ``expected``.

This module is plain data: servers and the harness both import it, so it must never import
ray, starlette or uvicorn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Cost of one model call in the ``batched`` workload, whatever the batch size up to MAX_BATCH.
BATCH_COST_S = 0.020
MAX_BATCH = 32
#: How long each ``fanout`` branch waits.
BRANCH_WAIT_S = 0.050
FANOUT_BRANCHES = 4
#: CPU burnt per request in the ``replicas`` workload.
BURN_S = 0.010

_INPUT: dict[str, Any] = {"x": 1}


@dataclass(frozen=True)
class Case:
    """One measured thing: a path, a body, the load wrk puts on it and the answer expected."""

    name: str
    concurrency: int
    expected: dict[str, Any]
    body: dict[str, Any] = field(default_factory=lambda: dict(_INPUT))
    #: Deployments (or steps) in a chain, for the per-hop slope of the ``hop`` workload.
    hops: int | None = None
    #: Replicas of the working node, for the ``replicas`` workload.
    replicas: int | None = None
    #: Best possible req/s given the work's own cost, to report the fraction achieved.
    ideal_rps: float | None = None
    #: A latency goal the p50 is judged against.
    target_p50_ms: float | None = None
    #: For the ``batched`` workload: is the model node batched (``max_batch_size``) or not.
    batching: bool | None = None

    @property
    def path(self) -> str:
        return f"/{self.name}"


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    cases: tuple[Case, ...]


def _hop(n: int) -> Case:
    # Each hop adds 1 to x; the ingress returns {"y": x + n}.
    return Case(f"hop{n}", concurrency=1, hops=n, expected={"y": 1 + n})


def _replicas(k: int) -> Case:
    return Case(
        f"replicas{k}",
        concurrency=8,
        replicas=k,
        ideal_rps=k / BURN_S,
        expected={"y": 2},
    )


def _batched(batching: bool, concurrency: int) -> Case:
    # ``batched`` and ``unbatched`` (64 connections) keep their names from earlier runs.
    name = ("batched" if batching else "unbatched") + ("" if concurrency == 64 else f"-c{concurrency}")
    per_call = min(concurrency, MAX_BATCH) if batching else 1
    return Case(name, concurrency=concurrency, batching=batching, ideal_rps=per_call / BATCH_COST_S, expected={"y": 2})


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "chain",
            "pre (x+1) -> model (*2) -> post ({'y': n}), three trivial steps, 32 connections",
            (Case("chain", concurrency=32, expected={"y": 4}),),
        ),
        Workload(
            "hop",
            "chains of 1, 3 and 6 trivial steps (x+1 each) at concurrency 1: cost per hop",
            (_hop(1), _hop(3), _hop(6)),
        ),
        Workload(
            "batched",
            f"one model node costing {BATCH_COST_S * 1e3:.0f} ms per call for up to {MAX_BATCH} "
            "inputs, one call at a time; with and without batching, at 64, 8 and 1 connections "
            "(at 1, batching must cost nothing: the p50s are compared)",
            tuple(_batched(batching, c) for c in (64, 8, 1) for batching in (True, False)),
        ),
        Workload(
            "fanout",
            f"{FANOUT_BRANCHES} branches waiting {BRANCH_WAIT_S * 1e3:.0f} ms each (x+i), "
            "then a combine (sum), concurrency 1",
            (Case("fanout", concurrency=1, target_p50_ms=60.0, expected={"y": 10}),),
        ),
        Workload(
            "replicas",
            f"one node burning {BURN_S * 1e3:.0f} ms of CPU per request, 1 vs 2 replicas, "
            "8 connections",
            (_replicas(1), _replicas(2)),
        ),
    )
}


def parse_workloads(spec: str) -> list[Workload]:
    """Turn the ``--workload`` argument servers receive (``chain`` or ``chain,hop``) into workloads."""
    names = [name for name in spec.split(",") if name]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise SystemExit(
            f"unknown workload(s) {unknown!r} in {spec!r}; known: {', '.join(WORKLOADS)}"
        )
    return [WORKLOADS[name] for name in names]


# -- cluster: the same work spread over two Ray nodes (benchmarks/servers/cluster_app.py) ----------
#: The Ray node a case's model (or steps, branches) runs on: the caller's ("near") or the other ("far").
CLUSTER = Workload(
    "cluster",
    "a two-raylet Ray cluster on this host (token auth on): the chain with its model on the "
    "ingress's Ray node (near) and on the other one (far), 32 connections; one far step at "
    "concurrency 1 (cross-node hop); fan-out and the batched node on the far node",
    (
        Case("cluster-chain-near", concurrency=32, expected={"y": 4}),
        Case("cluster-chain-far", concurrency=32, expected={"y": 4}),
        Case("cluster-hop-near", concurrency=1, expected={"y": 2}),
        Case("cluster-hop-far", concurrency=1, expected={"y": 2}),
        Case("cluster-fanout-far", concurrency=1, target_p50_ms=60.0, expected={"y": 10}),
        Case("cluster-batched-far", concurrency=64, ideal_rps=MAX_BATCH / BATCH_COST_S, expected={"y": 2}),
    ),
)
WORKLOADS[CLUSTER.name] = CLUSTER
