"""PLACEHOLDER: the dagserve systems' benchmark server. Not yet implemented.

To be written by the lead once dagserve's core exists. Contract (see benchmarks/systems.py)::

    python -m benchmarks.servers.dagserve_app --workload chain[,hop,...] --port P \\
        --backend ray|local [--inline]

must serve every case of every workload given on ``POST http://127.0.0.1:P/<case>`` and answer
``case.expected`` (benchmarks/workloads.py) using the shared work in benchmarks/servers/work.py,
then shut everything down (Ray included) and exit on SIGTERM. Register it in
benchmarks/systems.py (e.g. "dagserve-ray", "dagserve-local") once it works.
"""

from __future__ import annotations

import argparse

from benchmarks.servers._cli import fail, parse_args


def _add_dagserve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("ray", "local"), required=True)
    parser.add_argument("--inline", action="store_true", help="run trivial nodes inline")


def main() -> None:
    parse_args(__doc__ or "", _add_dagserve_options)
    fail("benchmarks.servers.dagserve_app: not yet implemented (placeholder for the dagserve systems)")


if __name__ == "__main__":
    main()
