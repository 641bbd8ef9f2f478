"""``python -m examples.detect_classify``: three images, their objects, and the batches formed.

::

    python -m examples.detect_classify                  # in-process (local backend)
    python -m examples.detect_classify --backend ray    # on a local Ray
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import dagserve

from .graph import graph

IMAGES = {
    "dots and a bar": [
        [1, 0, 0, 0, 0],
        [0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
    ],
    "a square": [
        [1, 1, 0],
        [1, 1, 0],
        [0, 0, 0],
    ],
    "a ragged square": [
        [1, 1, 1],
        [1, 0, 1],
        [1, 1, 1],
    ],
}


async def demo(app: dagserve.App) -> str:
    answers = await asyncio.gather(*(app.acall({"pixels": p}) for p in IMAGES.values()))
    lines = []
    for name, answer in zip(IMAGES, answers, strict=True):
        found = ", ".join(f"{o['label']} ({o['confidence']:.2f}, {o['tries']} tr)" for o in answer["objects"])
        lines.append(f"{name:>16}: {found}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.detect_classify", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    args = parser.parse_args(argv)
    with dagserve.deploy(graph, backend=args.backend) as app:
        print(asyncio.run(demo(app)))


if __name__ == "__main__":
    main()
