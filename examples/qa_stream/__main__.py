"""``python -m examples.qa_stream``: a few questions, each answer printed as its tokens arrive.

::

    python -m examples.qa_stream                   # in-process (local backend)
    python -m examples.qa_stream --backend ray     # on a local Ray
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import dagserve

from .graph import graph

QUESTIONS = [
    "How do bees make honey?",
    "What temperature should the water be for green tea?",
    "Why does the moon turn red during an eclipse?",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.qa_stream", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="local", choices=["local", "ray"])
    args = parser.parse_args(argv)
    with dagserve.deploy(graph, backend=args.backend) as app:
        for q in QUESTIONS:
            print(f"Q: {q}\nA: ", end="", flush=True)
            start = time.perf_counter()
            first = None
            for token in app.stream({"question": q}):
                first = first if first is not None else time.perf_counter() - start
                print(token, end="", flush=True)
            print(f"\n   (first token after {1000 * (first or 0):.0f} ms)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
