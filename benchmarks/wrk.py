"""Driving ``wrk`` (the only load generator used) and reading its report.

Requests are POSTs with a JSON body, set by a small Lua script written to a temporary file.
Errors are every non-2xx/3xx response plus every socket error (connect, read, write, timeout).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

#: A request slower than this counts as a timeout error (wrk's own default is 2 s, which the
#: slowest baselines exceed while still answering).
WRK_TIMEOUT_S = 10

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([0-9.]+)(us|ms|s|m|h)"
_PERCENTILE = re.compile(rf"^\s*([0-9.]+)%\s+{_TIME}\s*$", re.MULTILINE)
_REQUESTS = re.compile(rf"^\s*(\d+) requests in {_TIME},", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkError(RuntimeError):
    """wrk failed to run, or printed a report this module cannot read."""


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    duration_s: float
    non2xx: int
    socket_errors: dict[str, int]
    #: wrk's own text, kept for the logs.
    report: str = field(default="", repr=False)

    @property
    def errors(self) -> int:
        return self.non2xx + sum(self.socket_errors.values())


def to_ms(value: str, unit: str) -> float:
    """A wrk duration (``value`` in ``us``/``ms``/``s``/``m``/``h``) in milliseconds."""
    return float(value) * _UNIT_MS[unit]


def parse(report: str) -> WrkResult:
    """Read the text wrk prints with ``--latency``."""
    percentiles = {float(p): to_ms(v, u) for p, v, u in _PERCENTILE.findall(report)}
    requests = _REQUESTS.search(report)
    rps = _RPS.search(report)
    if requests is None or rps is None or 50.0 not in percentiles or 99.0 not in percentiles:
        raise WrkError(f"cannot read this wrk report (was --latency given?):\n{report}")
    socket = _SOCKET_ERRORS.search(report)
    counts = [int(n) for n in socket.groups()] if socket else [0, 0, 0, 0]
    non2xx = _NON_2XX.search(report)
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        requests=int(requests.group(1)),
        duration_s=to_ms(requests.group(2), requests.group(3)) / 1e3,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"), counts)),
        report=report,
    )


def lua_script(body: dict[str, Any]) -> str:
    payload = json.dumps(body)
    if "]==]" in payload:
        raise ValueError(f"body {payload!r} cannot be quoted as a Lua long string")
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{payload}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


def file_script(path: str, headers: dict[str, str]) -> str:
    """A script POSTing the bytes of the file at ``path`` (any bytes: tensors) with ``headers``."""
    lines = ['wrk.method = "POST"', f'local f = assert(io.open("{path}", "rb"))', "wrk.body = f:read(\"*a\")", "f:close()"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def run(
    url: str,
    body: dict[str, Any],
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    script: str | None = None,
) -> WrkResult:
    """Load ``url`` with POSTs of ``body`` (JSON) for ``duration_s`` over ``connections``
    connections; ``script``: a Lua script of one's own instead (see :func:`file_script`)."""
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError(f"refusing to load {url!r}: benchmarks only send traffic to 127.0.0.1")
    wrk = shutil.which("wrk")
    if wrk is None:
        raise WrkError("wrk is not installed; install it (Debian/Ubuntu: apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="dagserve-bench-") as lua:
        lua.write(script if script is not None else lua_script(body))
        lua.flush()
        argv = [
            wrk,
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={WRK_TIMEOUT_S}s",
            "--latency",
            "-s",
            lua.name,
            url,
        ]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + WRK_TIMEOUT_S + 30
        )
    if done.returncode != 0:
        raise WrkError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return parse(done.stdout)
