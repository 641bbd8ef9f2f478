"""``python -m examples.tenants``: classify held-out digits, each with its customer's own model.

::

    python -m examples.tenants                    # in-process (local backend)
    python -m examples.tenants --backend ray      # a private local Ray
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import dagserve

from .graph import CUSTOMERS, graph, holdout


def report(results: Sequence[dict[str, Any]], truth: Sequence[int], models: dict[str, Any]) -> str:
    """Accuracy per customer, then what the replicas loaded."""
    right: dict[str, list[bool]] = defaultdict(list)
    for r, y in zip(results, truth, strict=True):
        right[r["customer"]].append(r["digit"] == y)
    lines = ["customer  accuracy"]
    lines += [f"{c:<9} {sum(right[c])}/{len(right[c])}" for c in CUSTOMERS if right[c]]
    held = sorted(len(h) for h in models["replicas"].values())
    lines.append(
        f"{models['loads']} models loaded, {models['evictions']} evicted; the replicas hold {held} "
        f"(at most {models['max_models_per_replica']} each)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.tenants", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    parser.add_argument("-n", type=int, default=120, help="how many held-out images to classify")
    args = parser.parse_args(argv)
    pairs = holdout(args.n)
    with dagserve.deploy(graph, backend=args.backend) as app:
        for customer in CUSTOMERS:  # one call each first: every model loads once, on the emptiest replica
            app.call({**pairs[0][0], "customer": customer})

        async def run_all() -> list[dict[str, Any]]:
            return await asyncio.gather(*(app.acall(p) for p, _ in pairs))

        results = asyncio.run(run_all())
        if args.backend == "ray":
            time.sleep(1.5)  # Ray replicas send their counters about once a second (docs/multiplexing.md)
        models = app.status().nodes["CustomerModels"].models
    print(report(results, [y for _, y in pairs], models))
    print(f"cache hit ratio {models['hit_ratio']:.2f}")


if __name__ == "__main__":
    main()
