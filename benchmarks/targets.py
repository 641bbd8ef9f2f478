"""The performance targets of issue 32, judged from one run's records and printed as met / not met.

``python -m benchmarks.targets [--results DIR]`` judges the saved results of the last run
(``latest.json``) and of ``benchmarks.scaling`` (``scaling.json``); ``make bench`` ends with it.
``benchmarks.run`` and ``benchmarks.scaling`` also print the targets of what they measured.

Each target reads the records ``benchmarks.run`` (and ``benchmarks.scaling``) wrote; one whose
figures are missing (a system not selected, or failed) is "not measured", never "met". Throughput
targets compare req/s of two systems on the same case in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS_DIR, Record

#: The chain's throughput ratios: (system, reference, minimum of system's req/s over reference's).
CHAIN_RATIOS: tuple[tuple[str, str, float], ...] = (
    ("dagserve", "socket-floor", 0.8),
    ("dagserve", "floor", 0.3),
    ("dagserve-local", "floor", 0.6),
    ("dagserve-local-def", "floor", 0.6),
    ("dagserve", "serve-haproxy", 10.0),
)
#: dagserve's systems whose batcher is judged on the ``batched`` workload.
BATCHING_SYSTEMS = ("dagserve", "dagserve-def", "dagserve-local", "dagserve-local-def")
#: A batched node alone (1 connection) may add at most this to the unbatched node's p50.
BATCH_IDLE_MS = 0.5
#: Under load (8 and 64 connections) a batched node reaches at least this share of ideal req/s.
BATCH_LOAD_FRACTION = 0.9
#: Per-node (per-item) overhead "does not grow": the marginal cost of the wide half stays within
#: this factor of the narrow half's (timing noise on a shared machine is ±15%).
GROWTH_FACTOR = 1.25
#: The systems the scaling targets judge (hand-written Serve is measured beside them, not judged).
SCALING_SYSTEMS = ("dagserve",)
#: The first request after ready is within this factor of the later requests' p50.
FIRST_REQUEST_FACTOR = 2.0


@dataclass(frozen=True)
class Verdict:
    target: str
    #: True met, False not met, None not measured.
    met: bool | None
    detail: str

    def line(self) -> str:
        word = {True: "met", False: "NOT MET", None: "not measured"}[self.met]
        return f"  [{word:^12}] {self.target}: {self.detail}"


def _find(records: Iterable[Record], **match: Any) -> Record | None:
    for r in records:
        if all(r.get(k) == v for k, v in match.items()) and r.get("rps") is not None:
            return r
    return None


def chain_ratios(records: Sequence[Record]) -> list[Verdict]:
    out = []
    for system, ref, minimum in CHAIN_RATIOS:
        target = f"chain: {system} >= {minimum:g}x {ref} req/s"
        a, b = _find(records, case="chain", system=system), _find(records, case="chain", system=ref)
        if a is None or b is None or not b["rps"]:
            out.append(Verdict(target, None, f"{system if a is None else ref} not measured"))
            continue
        ratio = a["rps"] / b["rps"]
        out.append(Verdict(target, ratio >= minimum, f"{ratio:.3g}x ({a['rps']:.0f} vs {b['rps']:.0f} req/s)"))
    return out


def batching(records: Sequence[Record]) -> list[Verdict]:
    out = []
    for system in BATCHING_SYSTEMS:
        if not any(r.get("system") == system and r.get("workload") == "batched" for r in records):
            continue
        target = f"batched: {system} alone adds <= {BATCH_IDLE_MS:g} ms p50 over unbatched (1 connection)"
        a = _find(records, case="batched-c1", system=system)
        b = _find(records, case="unbatched-c1", system=system)
        if a is None or b is None:
            out.append(Verdict(target, None, "batched-c1 or unbatched-c1 not measured"))
        else:
            extra = a["p50_ms"] - b["p50_ms"]
            out.append(Verdict(target, extra <= BATCH_IDLE_MS, f"{extra:+.3f} ms ({a['p50_ms']:.3f} vs {b['p50_ms']:.3f})"))
        for case in ("batched-c8", "batched"):
            r = _find(records, case=case, system=system)
            target = f"{case}: {system} >= {BATCH_LOAD_FRACTION:.0%} of ideal batch req/s"
            if r is None or "fraction_of_ideal" not in r:
                out.append(Verdict(target, None, f"{case} not measured"))
            else:
                out.append(Verdict(target, r["fraction_of_ideal"] >= BATCH_LOAD_FRACTION,
                                   f"{r['fraction_of_ideal']:.1%} of {r['ideal_rps']:.0f} req/s ({r['concurrency']} connections)"))
    return out


def _growth(points: dict[int, float]) -> tuple[float, float] | None:
    """Marginal cost per unit over the narrow half and over the wide half of three sizes."""
    if len(points) < 3:
        return None
    n0, n1, n2 = sorted(points)[:3]
    return (points[n1] - points[n0]) / (n1 - n0), (points[n2] - points[n1]) / (n2 - n1)


def scaling(records: Sequence[Record]) -> list[Verdict]:
    out = []
    mine = [r for r in records if r.get("workload") == "scaling" and not r.get("failed")]
    for system in SCALING_SYSTEMS:
        for shape, unit in (("fanout", "node"), ("map", "item")):
            points = {r["size"]: r["p50_ms"] * 1e3 for r in mine if r["system"] == system and r["shape"] == shape}
            if not points:
                continue
            target = f"scaling: {system} {shape}: per-{unit} overhead does not grow with the {'width' if unit == 'node' else 'list'}"
            growth = _growth(points)
            if growth is None:
                out.append(Verdict(target, None, f"only sizes {sorted(points)} measured"))
                continue
            narrow, wide = growth
            met = wide <= GROWTH_FACTOR * max(narrow, 1.0)  # under 1 µs per unit is noise
            out.append(Verdict(target, met, f"{narrow:.0f} µs per {unit} (small) vs {wide:.0f} µs per {unit} (large)"))
        for r in (r for r in mine if r["system"] == system):
            target = f"scaling: {system} {r['case']}: first request after ready <= {FIRST_REQUEST_FACTOR:g}x later p50"
            first, p50 = r.get("first_ms"), r.get("p50_ms")
            if first is None or not p50:
                out.append(Verdict(target, None, "not measured"))
            else:
                out.append(Verdict(target, first <= FIRST_REQUEST_FACTOR * p50, f"{first:.2f} ms vs p50 {p50:.2f} ms"))
    return out


JUDGES: tuple[Callable[[Sequence[Record]], list[Verdict]], ...] = (chain_ratios, batching, scaling)


def judge(records: Sequence[Record], judges: Sequence[Callable[[Sequence[Record]], list[Verdict]]] = JUDGES) -> list[Verdict]:
    return [v for j in judges for v in j(records)]


def summary(records: Sequence[Record], judges: Sequence[Callable[[Sequence[Record]], list[Verdict]]] = JUDGES) -> str:
    """Every target of ``judges`` (default all), one line each, met / NOT MET / not measured."""
    verdicts = judge(records, judges)
    met = sum(v.met is True for v in verdicts)
    lines = [f"== targets (issue 32): {met} of {len(verdicts)} met"]
    lines += [v.line() for v in verdicts]
    return "\n".join(lines)


def saved(results: Path = RESULTS_DIR) -> list[Record]:
    """The records the targets judge: the last ``benchmarks.run`` (``latest.json``, one run, so its
    ratios compare systems measured together) and ``benchmarks.scaling``'s (``scaling.json``)."""
    out: list[Record] = []
    for name in ("latest.json", "scaling.json"):
        try:
            data = json.loads((results / name).read_text())
        except (OSError, ValueError):
            continue
        out += [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.targets", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help=f"directory of results (default {RESULTS_DIR})")
    args = parser.parse_args(argv)
    print(summary(saved(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
