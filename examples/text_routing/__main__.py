"""``python -m examples.text_routing``: reviews in four languages, then the canary split in numbers.

::

    python -m examples.text_routing                          # in-process (local backend)
    python -m examples.text_routing --backend ray            # on a local Ray
    python -m examples.text_routing --url http://127.0.0.1:8000   # a graph served by `dagserve run`
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import dagserve

from .graph import CANARY_SHARE, graph

SAMPLES = [
    "The staff was friendly and the food was great",
    "Das Essen war kalt und das Personal unfreundlich",
    "Le film était merveilleux, j'ai adoré",
    "El servicio fue terrible y muy lento",
    "Hyvää päivää kaikille",  # Finnish: no model, the switch's default answers
]
ENGLISH = "What a great film, I loved it"


async def demo(call: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], canary_requests: int) -> str:
    """Classify :data:`SAMPLES`, then count model versions over ``canary_requests`` English reviews."""
    lines = []
    for text in SAMPLES:
        r = await call({"text": text})
        lines.append(f"{r['language']:>7}  {r['sentiment']:<11}  {r['model_version'] or '-':<6}  {text}")
    answers = await asyncio.gather(*(call({"text": ENGLISH}) for _ in range(canary_requests)))
    versions = Counter(a["model_version"] for a in answers)
    share = versions["en-v2"] / canary_requests
    lines.append(
        f"canary: {versions['en-v2']} of {canary_requests} English requests answered by en-v2 "
        f"({share:.1%}; configured {CANARY_SHARE:.0%}), {versions['en-v1']} by en-v1"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.text_routing", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    parser.add_argument("--url", help="call a served graph at this URL instead of deploying one")
    parser.add_argument("-n", type=int, default=1000, help="English requests sent to measure the canary share")
    args = parser.parse_args(argv)
    if args.url:
        import httpx

        async def over_http() -> str:
            async with httpx.AsyncClient(base_url=args.url, timeout=30) as client:

                async def call(payload: dict[str, Any]) -> dict[str, Any]:
                    response = await client.post("/", json=payload)
                    response.raise_for_status()
                    return response.json()  # type: ignore[no-any-return]

                return await demo(call, args.n)

        print(asyncio.run(over_http()))
        return
    with dagserve.deploy(graph, backend=args.backend) as app:
        print(asyncio.run(demo(app.acall, args.n)))


if __name__ == "__main__":
    main()
