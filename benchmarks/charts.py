"""Draw the benchmark charts from the saved results, without running anything.

    python -m benchmarks.charts [--results benchmarks/results] [--out docs/img]

Reads the ``curve`` and ``scaling`` records of every ``*.json`` list in ``--results``
(``latest.json`` last, so its records win over older files' for the same system, case and
concurrency) and writes SVGs to ``--out``:

* ``bench-curve.svg``: the chain's throughput against latency (p50 and p99) as concurrency rises,
  one line per system (records of workload ``curve``, from ``benchmarks.run``);
* ``bench-scaling.svg``: cost as the graph grows (records of workload ``scaling``, from
  ``benchmarks.scaling``): per-request overhead per node or item, time to ready, first request
  after ready against later p50, and memory of every process the graph uses.

A chart whose records are missing is skipped, with a line saying so. Needs matplotlib (the
``bench`` extra).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS_DIR, Record, load_results

OUT = Path(__file__).resolve().parent.parent / "docs" / "img"
#: Fixed colours per system, so every chart reads the same.
COLOURS = {
    "floor": "#444444",
    "socket-floor": "#8c564b",
    "dagserve": "#1f77b4",
    "dagserve-local": "#2ca02c",
    "serve-haproxy": "#d62728",
    "serve": "#d62728",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "dagserve"  # the same records draw the same file
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    return path


def curve_chart(records: Iterable[Record], out: Path) -> Path | None:
    mine = [r for r in records if r["workload"] == "curve" and r.get("rps") is not None]
    if not mine:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for ax, key, title in ((axes[0], "p50_ms", "p50"), (axes[1], "p99_ms", "p99")):
        for system in dict.fromkeys(r["system"] for r in mine):
            pts = sorted((r for r in mine if r["system"] == system), key=lambda r: r["concurrency"])
            xs, ys = [r["rps"] for r in pts], [r[key] for r in pts]
            ax.plot(xs, ys, marker="o", label=system, color=COLOURS.get(system))
            for r in pts[:: max(1, len(pts) // 4)]:
                ax.annotate(f"c{r['concurrency']}", (r["rps"], r[key]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("throughput (req/s)")
        ax.set_ylabel(f"{title} latency (ms)")
        ax.set_title(f"chain: throughput vs {title} as connections rise")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, out / "bench-curve.svg")


def scaling_chart(records: Iterable[Record], out: Path) -> Path | None:
    mine = [r for r in records if r["workload"] == "scaling" and not r.get("failed")]
    if not mine:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), layout="constrained")
    systems = list(dict.fromkeys(r["system"] for r in mine))
    for shape, marker in (("fanout", "o"), ("map", "s")):
        for system in systems:
            pts = sorted((r for r in mine if r["system"] == system and r["shape"] == shape), key=lambda r: r["size"])
            if not pts:
                continue
            sizes = [r["size"] for r in pts]
            style = {"marker": marker, "color": COLOURS.get(system), "linestyle": "-" if shape == "fanout" else "--"}
            label = f"{system} {shape}"
            axes[0][0].plot(sizes, [r["overhead_us_per_unit"] for r in pts], label=label, **style)
            axes[0][1].plot(sizes, [r["ready_s"] for r in pts], label=label, **style)
            axes[1][0].plot(sizes, [r["first_ms"] / r["p50_ms"] if r.get("p50_ms") else None for r in pts],
                            label=label, **style)
            axes[1][1].plot(sizes, [r["rss_mb"] for r in pts], label=label, **style)
    titles = (
        ("per-request overhead per node or item (µs)", "µs"),
        ("time from start to ready (s)", "s"),
        ("first request after ready / later p50", "ratio"),
        ("memory of every process the graph uses (MB RSS)", "MB"),
    )
    for ax, (title, unit) in zip([a for row in axes for a in row], titles):
        ax.set_xscale("log")
        ax.set_xlabel("nodes (fan-out) or items (map)")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_yscale("log")
    axes[1][0].set_yscale("log")
    axes[1][0].axhline(2.0, color="#999999", linestyle=":", label="target: 2x")
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    return _save(fig, out / "bench-scaling.svg")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.charts", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help=f"directory of results (default {RESULTS_DIR})")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the SVGs go (default {OUT})")
    args = parser.parse_args(argv)
    records = load_results(args.results)
    for name, draw in (("curve", curve_chart), ("scaling", scaling_chart)):
        path = draw(records, args.out)
        print(f"{name}: {path}" if path else f"{name}: no records in {args.results}; not drawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
