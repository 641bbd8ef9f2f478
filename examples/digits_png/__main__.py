"""``python -m examples.digits_png``: write sample PNGs, or classify PNG files in process.

::

    python -m examples.digits_png sample digit.png [--index 7]   # a digit of the data set as a PNG
    python -m examples.digits_png classify digit.png ...         # deploy locally and classify files
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import dagserve

from .graph import classify, sample_png


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.digits_png", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="write a digit of the data set as a PNG")
    sample.add_argument("path", type=Path)
    sample.add_argument("--index", type=int, default=0, help="which image of the data set (0-1796)")
    run = commands.add_parser("classify", help="classify PNG files with the graph, in process")
    run.add_argument("paths", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "sample":
        args.path.write_bytes(sample_png(args.index))
        print(f"wrote {args.path}")
        return
    with dagserve.deploy(classify, backend="local") as app:
        for path in args.paths:
            image = dagserve.File(path.read_bytes(), filename=path.name, content_type="image/png")
            print(f"{path}: {app.call({'image': image})}")


if __name__ == "__main__":
    main()
