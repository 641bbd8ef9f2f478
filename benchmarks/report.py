"""Results: the records written to ``results/latest.json`` and the tables printed per workload.

A record is a plain dict with at least ``workload``, ``system``, ``rps``, ``p50_ms``, ``p99_ms``,
``errors`` and ``concurrency``; ``case`` names the variant (``hop3``; equal to the workload
name when there is only one), and derived figures are added where they apply:
``ideal_rps``/``fraction_of_ideal``, ``slope_ms_per_hop``/``intercept_ms`` (hop),
``target_p50_ms``/``meets_target``, ``speedup_vs_1_replica``, and for a system with a target
against another (``SystemSpec.target_vs``) ``vs_system``/``ratio_vs``/``target_ratio``/``meets_ratio_target``. A system that failed to start or
answer gets one record per case with null figures and the reason in ``note``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.workloads import Case, Workload
from benchmarks.wrk import WrkResult

Record = dict[str, Any]
#: Where ``benchmarks.run`` and the other benchmark scripts write their records.
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def record(workload: Workload, case: Case, system: str, result: WrkResult, mode: str) -> Record:
    rec: Record = {
        "workload": workload.name,
        "case": case.name,
        "system": system,
        "rps": round(result.rps, 2),
        "p50_ms": round(result.p50_ms, 3),
        "p99_ms": round(result.p99_ms, 3),
        "errors": result.errors,
        "concurrency": case.concurrency,
        "requests": result.requests,
        "duration_s": result.duration_s,
        "non2xx": result.non2xx,
        "socket_errors": result.socket_errors,
        "mode": mode,
    }
    if case.ideal_rps is not None:
        rec["ideal_rps"] = case.ideal_rps
        rec["fraction_of_ideal"] = round(result.rps / case.ideal_rps, 4)
    if case.target_p50_ms is not None:
        rec["target_p50_ms"] = case.target_p50_ms
        rec["meets_target"] = result.p50_ms <= case.target_p50_ms
    return rec


def failure(workload: Workload, case: Case, system: str, reason: str, mode: str) -> Record:
    return {
        "workload": workload.name,
        "case": case.name,
        "system": system,
        "rps": None,
        "p50_ms": None,
        "p99_ms": None,
        "errors": None,
        "concurrency": case.concurrency,
        "mode": mode,
        "failed": True,
        "note": f"failed: {reason}",
    }


def _ok(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if r["rps"] is not None]


def least_squares(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through ``points``."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var_x = sum((x - mean_x) ** 2 for x, _ in points)
    if var_x == 0:
        raise ValueError(f"need at least two distinct x values, got {points!r}")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var_x
    return slope, mean_y - slope * mean_x


def annotate(workload: Workload, records: list[Record]) -> None:
    """Add the figures that need several records of one system: hop slope, replica speedup."""
    by_case = {c.name: c for c in workload.cases}
    for system in dict.fromkeys(r["system"] for r in records):
        mine = [r for r in _ok(records) if r["system"] == system]
        hops = [(by_case[r["case"]].hops, r) for r in mine if by_case[r["case"]].hops is not None]
        if len({h for h, _ in hops}) >= 2:
            slope, intercept = least_squares([(float(h), r["p50_ms"]) for h, r in hops])
            for _, r in hops:
                r["slope_ms_per_hop"] = round(slope, 3)
                r["intercept_ms"] = round(intercept, 3)
        one = [r for r in mine if by_case[r["case"]].replicas == 1]
        for r in mine:
            if one and by_case[r["case"]].replicas is not None and one[0]["rps"]:
                r["speedup_vs_1_replica"] = round(r["rps"] / one[0]["rps"], 3)


def ratio_targets(records: list[Record], targets: Mapping[str, tuple[str, float]]) -> None:
    """Judge each ``system: (other, minimum)`` target: req/s over ``other``'s on the same case."""
    ok = _ok(records)
    for r in ok:
        if r["system"] not in targets:
            continue
        other, minimum = targets[r["system"]]
        ref = next((o for o in ok if o["system"] == other and o["case"] == r["case"]), None)
        if ref is not None and ref["rps"]:
            ratio = r["rps"] / ref["rps"]
            r.update(vs_system=other, ratio_vs=round(ratio, 3), target_ratio=minimum, meets_ratio_target=ratio >= minimum)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float) -> str:
    return f"{value:.0f}x" if value >= 100 else f"{value:.3g}x"


def table(workload: Workload, records: list[Record], baselines: Sequence[str]) -> str:
    """The workload's table: one row per (case, system), a ratio column per baseline present."""
    present = [b for b in baselines if any(r["system"] == b for r in _ok(records))]
    head = ["case", "system", "conc", "req/s", "p50 ms", "p99 ms", "errors"]
    head += [f"vs {b}" for b in present]
    rows: list[list[str]] = []
    for case in workload.cases:
        mine = [r for r in records if r["case"] == case.name]
        base = {r["system"]: r for r in _ok(mine)}
        for r in mine:
            row = [
                case.name,
                r["system"],
                str(r["concurrency"]),
                _num(r["rps"], 1),
                _num(r["p50_ms"], 2),
                _num(r["p99_ms"], 2),
                "-" if r["errors"] is None else str(r["errors"]),
            ]
            for b in present:
                ref = base.get(b)
                if ref is None or r["rps"] is None or not ref["rps"] or not ref["p50_ms"]:
                    row.append("-")
                else:
                    row.append(f"{_ratio(r['rps'] / ref['rps'])} / {_ratio(r['p50_ms'] / ref['p50_ms'])}")
            rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = [f"== {workload.name}: {workload.description}"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    if present:
        lines.append("   vs B: req/s divided by B's req/s / p50 divided by B's p50, same case, same run")
    lines += _notes(records)
    return "\n".join(lines)


def _notes(records: list[Record]) -> list[str]:
    notes: list[str] = []
    seen_slope: set[str] = set()
    for r in records:
        if "note" in r:
            notes.append(f"   {r['system']} {r['case']}: {r['note']}")
        if "slope_ms_per_hop" in r and r["system"] not in seen_slope:
            seen_slope.add(r["system"])
            notes.append(
                f"   {r['system']}: {r['slope_ms_per_hop']:+.3f} ms p50 per hop "
                f"(least squares over the hop cases; intercept {r['intercept_ms']:.3f} ms)"
            )
        if "fraction_of_ideal" in r and r["rps"] is not None:
            notes.append(
                f"   {r['system']} {r['case']}: {r['fraction_of_ideal']:.1%} of ideal "
                f"{r['ideal_rps']:.0f} req/s"
                + (
                    f", {r['speedup_vs_1_replica']:.2f}x the 1-replica req/s"
                    if "speedup_vs_1_replica" in r
                    else ""
                )
            )
        if "meets_ratio_target" in r:
            verdict = "meets" if r["meets_ratio_target"] else "misses"
            notes.append(
                f"   {r['system']} {r['case']}: {r['ratio_vs']:.3g}x {r['vs_system']}'s req/s {verdict} the "
                f">= {r['target_ratio']:g}x target"
            )
        if "meets_target" in r and r["rps"] is not None:
            verdict = "meets" if r["meets_target"] else "misses"
            notes.append(
                f"   {r['system']} {r['case']}: p50 {r['p50_ms']:.2f} ms {verdict} the "
                f"<= {r['target_p50_ms']:.0f} ms target"
            )
    return notes


def curve_table(records: list[Record]) -> str:
    """The ``curve`` records: one row per concurrency, req/s and p50/p99 per system."""
    systems = list(dict.fromkeys(r["system"] for r in records))
    levels = sorted({r["concurrency"] for r in records})
    head = ["conc", *systems]
    rows = []
    for c in levels:
        row = [str(c)]
        for s in systems:
            r = next((r for r in _ok(records) if r["system"] == s and r["concurrency"] == c), None)
            row.append("-" if r is None else f"{r['rps']:.0f} ({r['p50_ms']:.2f}/{r['p99_ms']:.2f})")
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["== curve: the chain as concurrency rises; req/s (p50/p99 ms)"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def write_json(path: Path, records: list[Record]) -> None:
    """Write atomically (``*.tmp`` then rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    os.replace(tmp, path)


def load_results(results: Path = RESULTS_DIR) -> list[Record]:
    """Every record of every ``*.json`` list in ``results``, a later file's replacing an earlier
    one's for the same workload, system, case and concurrency (``latest.json`` is read last)."""
    files = sorted(results.glob("*.json"), key=lambda p: (p.name == "latest.json", p.name))
    merged: dict[tuple[Any, ...], Record] = {}
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, list):
            continue
        for r in data:
            if isinstance(r, dict) and "workload" in r and "system" in r:
                merged[(r["workload"], r["system"], r.get("case"), r.get("concurrency"))] = r
    return list(merged.values())
