"""``python -m examples.digits``: classify held-out digits and print what the ensemble decided.

::

    python -m examples.digits                          # in-process (local backend)
    python -m examples.digits --backend ray            # a private local Ray with 1 logical GPU
    python -m examples.digits --url http://127.0.0.1:8000   # a graph served by `dagserve run`
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any

import dagserve

from .graph import graph, holdout


def classify_local(backend: str, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deploy the graph on ``backend`` and classify ``payloads`` concurrently."""
    # On Ray, NeuralNet's replicas ask for 0.25 GPU each: declare one logical GPU for the Ray
    # this starts, so they schedule on a machine without a real one.
    options: dict[str, Any] = {"num_gpus": 1} if backend == "ray" else {}
    with dagserve.deploy(graph, backend=backend, **options) as app:

        async def run_all() -> list[dict[str, Any]]:
            return await asyncio.gather(*(app.acall(p) for p in payloads))

        return asyncio.run(run_all())


def classify_http(url: str, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST each payload to a served graph (``dagserve run examples.digits:graph``)."""
    import httpx

    async def run_all() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            responses = await asyncio.gather(*(client.post("/", json=p) for p in payloads))
        for r in responses:
            r.raise_for_status()
        return [r.json() for r in responses]

    return asyncio.run(run_all())


def report(results: Sequence[dict[str, Any]], truth: Sequence[int]) -> str:
    """A short text report: the first answers, accuracy, and how many go to review."""
    lines = ["true  answer  confidence  review"]
    for r, y in list(zip(results, truth, strict=True))[:10]:
        flag = "; ".join(r["reasons"]) if r["needs_review"] else "-"
        lines.append(f"{y:>4}  {r['digit']:>6}  {r['confidence']:>10.2f}  {flag}")
    right = sum(r["digit"] == y for r, y in zip(results, truth, strict=True))
    wrong_flagged = sum(r["needs_review"] for r, y in zip(results, truth, strict=True) if r["digit"] != y)
    flagged = sum(r["needs_review"] for r in results)
    lines.append(
        f"accuracy {right}/{len(results)} = {right / len(results):.1%}; {flagged} flagged for review, "
        f"including {wrong_flagged} of the {len(results) - right} wrong answers"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.digits", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    parser.add_argument("--url", help="call a served graph at this URL instead of deploying one")
    parser.add_argument("-n", type=int, default=200, help="how many held-out images to classify")
    args = parser.parse_args(argv)
    pairs = holdout(args.n)
    payloads, truth = [p for p, _ in pairs], [y for _, y in pairs]
    start = time.perf_counter()
    if args.url:
        results = classify_http(args.url, payloads)
    else:
        results = classify_local(args.backend, payloads)
    print(report(results, truth))
    where = args.url or f"the {args.backend} backend, start-up included"
    print(f"({time.perf_counter() - start:.1f} s on {where})")


if __name__ == "__main__":
    main()
