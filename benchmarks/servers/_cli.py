"""What every benchmark server shares: its command line and how it stops.

A server is started as ``python -m benchmarks.servers.<name> --workload W[,W...] --port P [...]``
and serves each case of each workload on ``http://127.0.0.1:P/<case>`` until SIGTERM, when it
must release everything it started (Ray included) and exit.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from benchmarks.workloads import Workload, parse_workloads

HOST = "127.0.0.1"


def parse_args(
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> tuple[argparse.Namespace, list[Workload]]:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workload", required=True, help="workload name(s), comma separated")
    parser.add_argument("--port", type=int, required=True, help="port to listen on, on 127.0.0.1")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    return args, parse_workloads(args.workload)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks (serve/ray shutdown) run."""

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)


def announce_ready(port: int) -> None:
    print(f"ready on http://{HOST}:{port}", flush=True)


def fail(message: str) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(2)
