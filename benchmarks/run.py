"""Run the benchmarks: ``python -m benchmarks.run [--quick] [--only WORKLOAD ...] [--systems NAME ...] [--no-curves]``.

For each workload, each selected system that serves it is started in its own process (one Ray
instance per system and workload, shared by the workload's cases), every case is warmed up and
then measured with wrk on 127.0.0.1, and the server is torn down before the next system starts.
Every figure in a table is from this run; ratios compare systems on the same case. The
``build`` workload (``benchmarks/build.py``) runs last: import, compile, render and the time from
``dagserve run`` to the first answer, each in a fresh process.

The ``chain`` workload also draws curves: on the systems of ``CURVE_SYSTEMS``, once its case is
measured, the same server is measured again at every concurrency of ``CURVE_CONCURRENCY``
(records of workload ``curve``; ``python -m benchmarks.charts`` draws them). At the end every
target of issue 32 is printed as met / not met (``benchmarks/targets.py``).

Full mode: 6 s measured after a 2 s warm-up per case. ``--quick``: 2 s after 1 s (curves at 1, 8, 64
and 256 only), a smoke test.
Results go to ``benchmarks/results/latest.json`` (see ``benchmarks/report.py`` for the records);
server logs and raw wrk reports go to a temporary directory printed at the start.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks import build, launch, report, targets, wrk
from benchmarks.systems import SYSTEMS, SystemSpec
from benchmarks.workloads import WORKLOADS, Case, Workload

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
#: Throughput against latency as load rises, on the chain: these systems, at these concurrencies.
CURVE_SYSTEMS = ("floor", "socket-floor", "dagserve", "dagserve-local", "serve-haproxy")
CURVE_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CURVE = Workload("curve", "the chain as concurrency rises", ())


@dataclass(frozen=True)
class Mode:
    name: str
    duration_s: float
    warmup_s: float
    #: The concurrencies of the chain's curve.
    curve: tuple[int, ...] = CURVE_CONCURRENCY


QUICK = Mode("quick", duration_s=2, warmup_s=1, curve=(1, 8, 64, 256))
FULL = Mode("full", duration_s=6, warmup_s=2)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_case(
    server: launch.RunningServer, workload: Workload, case: Case, mode: Mode, log_dir: Path, label: str = ""
) -> report.Record:
    """Warm up then measure one case (at ``case.concurrency``) and return its record."""
    url = server.url(case)
    wrk.run(url, case.body, connections=case.concurrency, duration_s=mode.warmup_s)
    # The machine is small and may be shared: keep the load seen just before measuring.
    load_1m = os.getloadavg()[0]
    result = wrk.run(url, case.body, connections=case.concurrency, duration_s=mode.duration_s)
    (log_dir / f"wrk-{server.system.name}-{case.name}{label}.txt").write_text(result.report)
    log(
        f"  {case.name + label:<14} c={case.concurrency:<3} {result.rps:10.1f} req/s  "
        f"p50 {result.p50_ms:8.2f} ms  p99 {result.p99_ms:8.2f} ms  errors {result.errors}  "
        f"(load {load_1m:.1f})"
    )
    rec = report.record(workload, case, server.system.name, result, mode.name)
    rec["load_1m_before"] = round(load_1m, 2)
    return rec


def measure(
    server: launch.RunningServer, workload: Workload, mode: Mode, log_dir: Path, records: list[report.Record]
) -> None:
    """Warm up then measure each case, appending its record as soon as it is measured."""
    for case in workload.cases:
        records.append(measure_case(server, workload, case, mode, log_dir))


def measure_curve(
    server: launch.RunningServer, workload: Workload, mode: Mode, log_dir: Path, records: list[report.Record]
) -> None:
    """The workload's (first) case again at every concurrency of the curve, on the same server."""
    base = workload.cases[0]
    for concurrency in mode.curve:
        case = replace(base, concurrency=concurrency)
        records.append(measure_case(server, CURVE, case, mode, log_dir, label=f"@c{concurrency}"))


def run_workload(
    workload: Workload, systems: list[SystemSpec], mode: Mode, log_dir: Path, curves: bool = False
) -> tuple[list[report.Record], list[report.Record]]:
    """The workload's records, and the curve's (``curves``: on the chain, for CURVE_SYSTEMS)."""
    records: list[report.Record] = []
    curve: list[report.Record] = []
    for system in systems:
        log(f"[{workload.name}] {system.name}: starting")
        mine: list[report.Record] = []
        try:
            with launch.running(system, [workload], log_dir) as server:
                log(f"[{workload.name}] {system.name}: answering after {server.startup_s:.1f} s")
                measure(server, workload, mode, log_dir, mine)
                if curves and workload.name == "chain" and system.name in CURVE_SYSTEMS:
                    measure_curve(server, workload, mode, log_dir, curve)
            log(f"[{workload.name}] {system.name}: stopped")
        except (launch.ServerError, wrk.WrkError) as exc:
            log(f"[{workload.name}] {system.name}: FAILED: {exc}")
            reason = str(exc).splitlines()[0]
            measured = {r["case"] for r in mine}
            mine += [
                report.failure(workload, c, system.name, reason, mode.name)
                for c in workload.cases
                if c.name not in measured
            ]
        records += mine
    report.annotate(workload, records)
    report.ratio_targets(records, {s.name: s.target_vs for s in SYSTEMS.values() if s.target_vs})
    return records, curve


def run_build(mode: Mode, log_dir: Path) -> list[report.Record]:
    """The ``build`` workload (benchmarks/build.py): the same in quick and full mode."""
    log("[build] import, compile, render, first answer")
    try:
        recs = build.records(build.measure(log_dir), mode.name)
    except Exception as exc:  # noqa: BLE001 - a failed measurement is reported, the others kept
        log(f"[build] FAILED: {exc}")
        return [{"workload": "build", "case": "build", "system": "dagserve", "rps": None, "p50_ms": None,
                 "p99_ms": None, "errors": None, "concurrency": 1, "mode": mode.name, "failed": True,
                 "note": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}]
    print(build.table(recs) + "\n", flush=True)
    return recs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs after 1 s warm-up (smoke test)")
    parser.add_argument("--only", nargs="+", choices=[*WORKLOADS, "build"], metavar="WORKLOAD",
                        help=f"workloads to run (default all: {', '.join(WORKLOADS)}, build)")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), metavar="NAME",
                        help=f"systems to run (default all: {', '.join(SYSTEMS)})")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    parser.add_argument("--no-curves", dest="curves", action="store_false",
                        help="skip the chain's concurrency sweep (the throughput-latency curves)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = QUICK if args.quick else FULL
    chosen = args.only or [*WORKLOADS, "build"]
    workloads = [WORKLOADS[name] for name in chosen if name != "build"]
    systems = [SYSTEMS[name] for name in (args.systems or SYSTEMS)]
    baselines = [s.name for s in SYSTEMS.values() if s.baseline]
    log_dir = Path(tempfile.mkdtemp(prefix="dagserve-bench-"))
    log(f"{mode.name} mode: {mode.duration_s:g} s runs after {mode.warmup_s:g} s warm-up; logs in {log_dir}")

    started = time.monotonic()
    records: list[report.Record] = []
    tables: list[str] = []
    for workload in workloads:
        serving = [s for s in systems if workload.name in s.workloads]
        if not serving:
            log(f"[{workload.name}] no selected system serves it; skipped")
            continue
        mine, curve = run_workload(workload, serving, mode, log_dir, args.curves)
        records += mine + curve
        tables.append(report.table(workload, mine, baselines))
        print(tables[-1] + "\n", flush=True)
        if curve:
            print(report.curve_table(curve) + "\n", flush=True)
    if "build" in chosen:
        records += run_build(mode, log_dir)
    elapsed = time.monotonic() - started

    report.write_json(args.output, records)
    print(f"{len(records)} records written to {args.output}; took {elapsed:.0f} s ({mode.name} mode)")
    print(targets.summary(records), flush=True)
    # Errors are data (serve-docs may time out under load); only a system that failed to run fails.
    return 1 if any(r.get("failed") for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
