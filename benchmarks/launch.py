"""Starting a system's server on a free 127.0.0.1 port, waiting until it answers, tearing it down."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.servers._cli import HOST
from benchmarks.systems import SystemSpec
from benchmarks.workloads import Case, Workload

REPO_ROOT = Path(__file__).resolve().parent.parent
#: How long a server gets to shut down (Ray and Serve included) after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 60.0


#: Starts on a fresh port when another process took the one picked (see ``running``).
_PORT_ATTEMPTS = 3


class ServerError(RuntimeError):
    """A server exited, never answered, or answered wrongly."""


@dataclass
class RunningServer:
    system: SystemSpec
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    #: From launch until every case answered.
    startup_s: float = 0.0

    def url(self, case: Case) -> str:
        return f"http://{HOST}:{self.port}{case.path}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(server: RunningServer, cases: Sequence[Case], deadline: float, verify: bool) -> None:
    pending = list(cases)
    last = "no response yet"
    # trust_env=False: never route 127.0.0.1 through a proxy from the environment.
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while pending:
            if server.process.poll() is not None:
                raise ServerError(
                    f"{server.system.name} exited with {server.process.returncode} before "
                    f"answering; log {server.log_path}:\n{log_tail(server.log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{server.system.name} did not answer {[c.name for c in pending]} within "
                    f"{server.system.startup_timeout_s:.0f} s (last: {last}); log {server.log_path}:\n"
                    f"{log_tail(server.log_path)}"
                )
            case = pending[0]
            try:
                response = client.post(server.url(case), json=case.body)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__} on {case.path}"
                time.sleep(0.25)
                continue
            if response.status_code != 200:
                last = f"HTTP {response.status_code} on {case.path}: {response.text[:120]!r}"
                time.sleep(0.25)
                continue
            answer = response.json()
            if verify and answer != case.expected:
                raise ServerError(
                    f"{server.system.name} answered {answer!r} to {case.body!r} on {case.path}, "
                    f"expected {case.expected!r}"
                )
            pending.pop(0)


def stop(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server, SIGKILL it if it hangs (``timeout_s``), then clear anything left in its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    # The server leads its own process group (start_new_session), so this reaches only what it
    # started: after a SIGKILL, its raylet and GCS. Ray workers run in sessions of their own
    # and exit when their raylet dies.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


@contextmanager
def running(
    system: SystemSpec,
    workloads: Sequence[Workload],
    log_dir: Path,
    *,
    verify: bool = True,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> Iterator[RunningServer]:
    """Start ``system`` serving ``workloads``; yield once every case answers (HTTP 200).

    With ``verify`` (the default) an answer other than the case's ``expected`` raises ServerError.
    At the end the server gets SIGTERM, and SIGKILL (its process group) after ``stop_timeout_s``.
    """
    # The port is free when picked but is bound only later, by the server; a process starting at
    # the same time (another system's Ray picks random ports) can take it first. Then try another.
    for attempt in range(_PORT_ATTEMPTS):
        port = free_port()
        argv = system.argv([w.name for w in workloads], port)
        log_path = log_dir / f"{system.name}-{'-'.join(w.name for w in workloads)}.log"
        started = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env={**os.environ, **system.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = RunningServer(system, port, process, log_path)
        cases = [c for w in workloads for c in w.cases]
        try:
            _wait_ready(server, cases, started + system.startup_timeout_s, verify)
            break
        except BaseException as exc:
            stop(process)
            lost_port = isinstance(exc, ServerError) and b"address already in use" in log_path.read_bytes()
            if lost_port and attempt + 1 < _PORT_ATTEMPTS:
                continue
            raise
    try:
        server.startup_s = time.monotonic() - started
        yield server
    finally:
        stop(process, stop_timeout_s)
