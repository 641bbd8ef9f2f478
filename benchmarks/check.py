"""Correctness, not speed: what each system answers, to check they all give the same answers.

``answers("serve-tuned", ["chain", "hop"])`` starts the system once for all the workloads given
(one Ray instance), POSTs every case's body a few times with httpx to 127.0.0.1 and returns
``{case: [answer, ...]}``. ``python -m benchmarks.check`` does it for every registered system
and exits non-zero if any answer differs from the case's expected one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks import launch
from benchmarks.systems import SYSTEMS
from benchmarks.workloads import WORKLOADS

Answers = dict[str, list[Any]]


def answers(
    system: str,
    workloads: Sequence[str] | None = None,
    *,
    requests: int = 3,
    log_dir: Path | None = None,
    stop_timeout_s: float = launch.STOP_TIMEOUT_S,
) -> Answers:
    """Each case's answers from ``system``; ``workloads`` defaults to all the system serves.

    ``stop_timeout_s``: how long the server may shut down after SIGTERM before it is killed.
    """
    spec = SYSTEMS[system]
    names = list(workloads) if workloads is not None else [w for w in WORKLOADS if w in spec.workloads]
    unserved = [w for w in names if w not in spec.workloads]
    if unserved:
        raise ValueError(f"system {system!r} does not serve {unserved!r}; it serves {sorted(spec.workloads)!r}")
    chosen = [WORKLOADS[w] for w in names]
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="dagserve-check-"))
    result: Answers = {}
    # verify=False: return what the system says, even when wrong, for the caller to compare.
    with launch.running(spec, chosen, log_dir, verify=False, stop_timeout_s=stop_timeout_s) as server:
        with httpx.Client(timeout=30.0, trust_env=False) as client:
            for workload in chosen:
                for case in workload.cases:
                    result[case.name] = [
                        _answer(client.post(server.url(case), json=case.body)) for _ in range(requests)
                    ]
    return result


def answers_of_all(
    systems: Sequence[str], *, requests: int = 3, stop_timeout_s: float = launch.STOP_TIMEOUT_S
) -> dict[str, Answers]:
    """``answers`` for several systems, started side by side (start-up and teardown dominate)."""
    with ThreadPoolExecutor(max_workers=max(1, len(systems))) as pool:
        futures = {
            name: pool.submit(answers, name, requests=requests, stop_timeout_s=stop_timeout_s) for name in systems
        }
        return {name: future.result() for name, future in futures.items()}


def _answer(response: httpx.Response) -> Any:
    if response.status_code != 200:
        return {"http_status": response.status_code, "body": response.text[:200]}
    return response.json()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.check", description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    args = parser.parse_args(argv)
    expected = {c.name: c.expected for w in WORKLOADS.values() for c in w.cases}
    wrong = 0
    for system, by_case in answers_of_all(args.systems).items():
        for case, got in by_case.items():
            ok = all(a == expected[case] for a in got)
            wrong += not ok
            print(f"{system:<12} {case:<10} {'ok ' if ok else 'BAD'} {got[0]!r} (expected {expected[case]!r})")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
