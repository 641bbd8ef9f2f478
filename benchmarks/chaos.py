"""``make chaos``: what dagserve does when things go wrong, measured on this machine.

::

    python -m benchmarks.chaos                       # every scenario, Ray backend (< 5 minutes)
    python -m benchmarks.chaos --only overload,kill  # some of them
    python -m benchmarks.chaos --backend local       # the in-process backend (no replica kill)

One server process (``python -m benchmarks.chaos serve``, which calls :func:`dagserve.serve`)
serves every scenario's graph on 127.0.0.1 with the Ray backend; this driver sends it traffic
from the same machine and measures each answer:

* **overload**: a node of known capacity (40 ms of async sleep, 1 replica taking 4 requests at
  once, so 100 req/s; 2 more may queue) at 0.3x, then 3x, then 0.3x that capacity. Excess requests should get 503 with
  ``Retry-After`` quickly; admitted ones should keep their latency; afterwards p99 should come
  back within 10 % of the unloaded p99.
* **kill**: a model node with 2 replicas under steady load (75 % of their capacity); one replica
  process is SIGKILLed. Once with ``retries=0`` (requests in flight on it fail) and once with
  ``retries=2`` (they are retried on the other replica). Recovery is the time until the
  replacement replica runs and latency is back to the level before the kill.
* **slow clients**: a normal client (wrk, one connection) measures latency alone and while 200
  connections trickle their request head or body one byte at a time.
* **timeouts**: requests to a node past its ``timeout_s`` and to a graph past its request deadline:
  each must be a 504 naming the node, close to the deadline, and the slow call must be cancelled
  in its replica.

Open-loop load (requests sent on a fixed schedule, latency counted from the scheduled time) comes
from a small keep-alive HTTP/1.1 client written on asyncio streams, because each answer's status,
headers and timing are needed and a full client costs more CPU than this 2-core machine can spare
next to the server. Every loop is bounded; only 127.0.0.1 is ever contacted. The table is
printed and written to ``benchmarks/results/chaos.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagserve

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results" / "chaos.json"
#: The whole run (server start included) must end within this; scenarios left are skipped.
TOTAL_BUDGET_S = 285.0
#: How long the server may take to deploy every graph (a cold Ray on a loaded 2-core machine).
STARTUP_TIMEOUT_S = 150.0
SCENARIOS = ("overload", "kill", "slow_clients", "timeouts")

# -- the graphs (imported by the server process and, by reference, by Ray's replicas) ------------

#: The overload scenario's node: service time, requests at once, queue; capacity CONCURRENCY/SERVICE_S.
SERVICE_S = 0.040
CONCURRENCY = 4
QUEUE = 2
#: Service time of each killable worker call, and how many calls a worker replica takes at once.
WORKER_SERVICE_S = 0.050
WORKER_CONCURRENCY = 2
WORKER_REPLICAS = 2
#: Node timeout and request deadline of the timeouts scenario.
NODE_TIMEOUT_S = 0.3
REQUEST_DEADLINE_S = 0.5
#: How long the timeouts scenario's slow node would run if nobody cancelled it.
HANG_S = 10.0


@dagserve.node(max_ongoing_requests=CONCURRENCY, max_queued_requests=QUEUE)
async def capacity(x: int) -> int:
    """A node of known capacity: CONCURRENCY / SERVICE_S requests per second."""
    await asyncio.sleep(SERVICE_S)
    return x


@dagserve.node(num_replicas=WORKER_REPLICAS, max_ongoing_requests=WORKER_CONCURRENCY, max_queued_requests=20)
class Worker:
    """Answers with its process id after WORKER_SERVICE_S; two replicas, killable."""

    async def __call__(self, x: int) -> int:
        await asyncio.sleep(WORKER_SERVICE_S)
        return os.getpid()


@dagserve.node
async def steady(x: int) -> int:
    """The slow-clients scenario's node: a short async wait."""
    await asyncio.sleep(0.002)
    return x


@dagserve.node
class Probe:
    """Sleeps for ``HANG_S`` and counts how its calls ended (``stats``)."""

    def __init__(self) -> None:
        self.counts = {"started": 0, "cancelled": 0, "finished": 0}

    async def __call__(self, x: int) -> int:
        self.counts["started"] += 1
        try:
            await asyncio.sleep(HANG_S)
        except asyncio.CancelledError:
            self.counts["cancelled"] += 1
            raise
        self.counts["finished"] += 1
        return x

    def stats(self, x: int) -> dict[str, int]:
        return dict(self.counts)


@dagserve.node
class Sink:
    """Downstream of the probe: counts how often it ran (it never should, past a deadline)."""

    def __init__(self) -> None:
        self.ran = 0

    def __call__(self, x: int) -> int:
        self.ran += 1
        return x

    def stats(self, x: int) -> dict[str, int]:
        return {"ran": self.ran}


def _probe_graph(name: str, probe: Any) -> dagserve.Graph:
    sink = Sink()
    with dagserve.Input() as inp:
        out = dagserve.switch(
            inp["case"], {"run": sink(probe(inp["x"])), "stats": [probe.stats(inp["x"]), sink.stats(inp["x"])]}
        )
    return dagserve.Graph(out, name=name)


def graphs() -> dict[str, tuple[dagserve.Graph, float | None]]:
    """Graph name -> (graph, request deadline in seconds or None for the default)."""
    out: dict[str, tuple[dagserve.Graph, float | None]] = {}
    with dagserve.Input() as inp:
        out["overload"] = (dagserve.Graph(capacity(inp["x"]), name="overload"), None)
    for retries in (0, 2):
        with dagserve.Input() as inp:
            worker = Worker.options(retries=retries)()
            out[f"kill_r{retries}"] = (dagserve.Graph(worker(inp["x"]), name=f"kill_r{retries}"), None)
    with dagserve.Input() as inp:
        out["steady"] = (dagserve.Graph(steady(inp["x"]), name="steady"), None)
    out["node_timeout"] = (_probe_graph("node_timeout", Probe.options(timeout_s=NODE_TIMEOUT_S)()), None)
    out["deadline"] = (_probe_graph("deadline", Probe()), REQUEST_DEADLINE_S)
    return out


def serve_main(port: int, backend: str) -> None:
    """The server process: deploy every graph, serve them on 127.0.0.1:``port`` until SIGTERM."""
    apps: list[dagserve.App] = []
    try:
        for graph, deadline in graphs().values():
            options: dict[str, Any] = {"ready_timeout_s": STARTUP_TIMEOUT_S}
            if deadline is not None:
                options["request_timeout_s"] = deadline
            apps.append(dagserve.deploy(graph, backend=backend, **options))
        # The admin token comes from DAGSERVE_ADMIN_TOKEN, set by the driver (status polls).
        dagserve.serve(apps, host=HOST, port=port, log_level="warning", shutdown_timeout_s=5)
    finally:
        for app in reversed(apps):
            with contextlib.suppress(Exception):
                app.shutdown()


# -- a small HTTP/1.1 client ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One request: when it was due (a ``clock()`` value), how long it took from then, its answer."""

    due: float
    latency: float
    status: int  # 0: no HTTP answer (connection refused, reset, client timeout)
    error_type: str | None = None
    node: str | None = None
    retry_after: str | None = None
    #: How late the client itself was in sending it (its own event loop's lag): a measurement check.
    lag: float = 0.0


class ClientError(RuntimeError):
    """The server's answer could not be read."""


class HttpClient:
    """Keep-alive HTTP/1.1 POSTs of JSON to one 127.0.0.1 port, over at most ``max_connections``."""

    #: A connection idle longer than this is dropped, not reused: uvicorn closes idle ones after 5 s.
    MAX_IDLE_S = 3.0

    def __init__(self, port: int, *, max_connections: int = 256, timeout_s: float = 30.0, token: str | None = None) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._auth = f"authorization: Bearer {token}\r\n" if token else ""

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < self.MAX_IDLE_S and not writer.is_closing() and not reader.at_eof():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.open_connection(HOST, self.port)
        return reader, writer, False

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)``; raises OSError/ClientError/TimeoutError without an answer."""
        data = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: {HOST}:{self.port}\r\n{self._auth}"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
        ).encode()
        async with self._slots:
            for attempt in range(2):
                reader, writer, reused = await self._connection()
                try:
                    async with asyncio.timeout(self.timeout_s):
                        writer.write(head + data)
                        status, headers, payload = await read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    writer.close()
                    # The server closed a kept-alive connection before reading it: send again, once.
                    unanswered = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
                    if reused and unanswered and attempt == 0:
                        continue
                    raise
                except BaseException:
                    writer.close()
                    raise
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                else:
                    self._idle.append((reader, writer, time.monotonic()))
                return status, headers, payload
        raise AssertionError("unreachable")  # pragma: no cover

    async def post(self, path: str, body: Any, due: float, clock: Callable[[], float]) -> Outcome:
        """POST ``body``; the latency counts from ``due`` (the scheduled send time)."""
        lag = max(0.0, clock() - due)
        try:
            status, headers, payload = await self.request("POST", path, body)
        except (OSError, ClientError, TimeoutError, asyncio.IncompleteReadError):
            return Outcome(due, clock() - due, 0, lag=lag)
        error_type = node = None
        if status >= 400:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                error = json.loads(payload)["error"]
                error_type, node = error.get("type"), error.get("node")
        return Outcome(due, clock() - due, status, error_type, node, headers.get("retry-after"), lag)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer, _ in idle:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (with Content-Length or chunked) from ``reader``."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ClientError(f"not an HTTP status line: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        return int(parts[1]), headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        for _ in range(1_000_000):  # bounded: a response has fewer chunks than this
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(chunk[:-2])
        return int(parts[1]), headers, b"".join(chunks)
    raise ClientError("the response has neither Content-Length nor chunked encoding")


async def paced(
    client: HttpClient,
    path: str,
    body: Callable[[int], Any],
    *,
    rate: float,
    duration_s: float,
    clock: Callable[[], float],
    stop: asyncio.Event | None = None,
    done: list[Outcome] | None = None,
) -> list[Outcome]:
    """Open-loop load: ``rate`` requests per second for ``duration_s`` (or until ``stop``).

    Each request is sent on schedule whether or not earlier ones answered, so a slow server does
    not slow the load down (no coordinated omission): latency counts from the scheduled time.
    Each outcome is also appended to ``done`` as it arrives, for a watcher to read meanwhile.
    """
    start = clock()
    tasks: list[asyncio.Task[Outcome]] = []

    async def one(i: int, due: float) -> Outcome:
        outcome = await client.post(path, body(i), due, clock)
        if done is not None:
            done.append(outcome)
        return outcome

    for i in range(max(1, int(rate * duration_s))):
        if stop is not None and stop.is_set():
            break
        due = start + i / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    return list(await asyncio.gather(*tasks))


# -- figures ------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


#: Statuses the server gives on purpose to shed or bound work (counted as "rejected").
REJECTED = frozenset({408, 429, 503, 504})


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    sent: int = 0
    succeeded: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None  # of successful requests
    p99_ms: float | None = None
    p99_rejected_ms: float | None = None  # of rejected requests (503/504 ...)
    recovery_s: float | None = None
    note: str = ""

    @classmethod
    def of(cls, scenario: str, outcomes: Sequence[Outcome], **extra: Any) -> Row:
        ok = [o.latency for o in outcomes if 200 <= o.status < 300]
        rejected = Counter(str(o.status) for o in outcomes if o.status in REJECTED)
        failed = Counter(
            "conn" if o.status == 0 else str(o.status)
            for o in outcomes
            if not (200 <= o.status < 300) and o.status not in REJECTED
        )
        return cls(
            scenario,
            sent=len(outcomes),
            succeeded=len(ok),
            rejected=dict(sorted(rejected.items())),
            failed=dict(sorted(failed.items())),
            p50_ms=ms(percentile(ok, 50)),
            p99_ms=ms(percentile(ok, 99)),
            p99_rejected_ms=ms(percentile([o.latency for o in outcomes if o.status in REJECTED], 99)),
            **extra,
        )


@dataclass
class Target:
    """A published target and whether this run met it."""

    scenario: str
    what: str
    measured: float | None
    target: float
    unit: str
    met: bool | None  # None: could not be measured

    @classmethod
    def at_most(cls, scenario: str, what: str, measured: float | None, target: float, unit: str) -> Target:
        return cls(scenario, what, measured, target, unit, None if measured is None else measured <= target)


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in counts.items()) or "-"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    head = (
        "| scenario | sent | ok | rejected (by code) | failed | p50 / p99 ok (ms) | p99 rejected (ms) "
        "| recovery (s) |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.sent} | {r.succeeded} | {_counts(r.rejected)} | {_counts(r.failed)} "
            f"| {_num(r.p50_ms)} / {_num(r.p99_ms)} | {_num(r.p99_rejected_ms)} | {_num(r.recovery_s)} |"
        )
    return "\n".join(lines)


def targets_table(targets: Sequence[Target]) -> str:
    lines = ["| scenario | target | measured | met |", "|---|---|---|---|"]
    for t in targets:
        met = "n/a" if t.met is None else ("yes" if t.met else "**no**")
        lines.append(f"| {t.scenario} | {t.what} <= {t.target:g} {t.unit} | {_num(t.measured)} {t.unit} | {met} |")
    return "\n".join(lines)


def cpu_table(details: dict[str, Any]) -> str:
    """Per scenario: the load average and the cores the machine and this run kept busy."""
    cpus = os.cpu_count()
    lines = [
        f"| scenario | load average (1 min) | machine busy (of {cpus} cores) | this run's processes | other work |",
        "|---|---|---|---|---|",
    ]
    for name, d in details.items():
        cpu = d.get("cpu") or {}
        load = d.get("loadavg_1m") or ["-", "-"]
        lines.append(
            f"| {name} | {load[0]} -> {load[1]} | {cpu.get('machine_busy_cores', '-')} "
            f"| {cpu.get('chaos_cores', '-')} | {cpu.get('others_cores', '-')} |"
        )
    return "\n".join(lines)


def windows(outcomes: Sequence[Outcome], start: float, width: float) -> list[list[Outcome]]:
    """``outcomes`` due at or after ``start``, grouped into consecutive windows of ``width`` seconds."""
    out: list[list[Outcome]] = []
    for o in sorted(outcomes, key=lambda o: o.due):
        if o.due < start:
            continue
        k = int((o.due - start) // width)
        while len(out) <= k:
            out.append([])
        out[k].append(o)
    return out


def recovery_time(
    outcomes: Sequence[Outcome],
    since: float,
    width: float,
    healthy: Callable[[list[Outcome]], bool],
    *,
    consecutive: int = 3,
) -> float | None:
    """Seconds from ``since`` to the start of the first run of ``consecutive`` healthy windows
    (fewer if the run ends healthy before that many windows); None when there is no such run."""
    groups = windows(outcomes, since, width)
    streak_start: int | None = None
    for k, group in enumerate(groups):
        if group and healthy(group):
            if streak_start is None:
                streak_start = k
            if k - streak_start + 1 >= consecutive:
                return streak_start * width
        else:
            streak_start = None
    return None if streak_start is None else streak_start * width


# -- the server process -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    admin_token: str
    startup_s: float = 0.0
    #: Where to write a py-spy profile of the ingress during the overload (None: no profile).
    profile_path: Path | None = None


@contextlib.contextmanager
def server(backend: str, log_path: Path) -> Iterator[Server]:
    """Start ``python -m benchmarks.chaos serve`` in its own session; stop it (and its Ray) after."""
    port = free_port()
    token = secrets.token_hex(16)
    env = {**os.environ, "DAGSERVE_ADMIN_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    env.pop("DAGSERVE_TOKEN", None)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.chaos", "serve", "--port", str(port), "--backend", backend],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    srv = Server(port, process, log_path, token)
    try:
        _wait_ready(srv, started + STARTUP_TIMEOUT_S)
        srv.startup_s = time.monotonic() - started
        yield srv
    finally:
        _stop(process)


def _wait_ready(srv: Server, deadline: float) -> None:
    import httpx

    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while True:
            if srv.process.poll() is not None:
                raise RuntimeError(f"the chaos server exited with {srv.process.returncode}:\n{_tail(srv.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the chaos server was not ready within {STARTUP_TIMEOUT_S:g} s:\n{_tail(srv.log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"http://{HOST}:{srv.port}/-/ready").status_code == 200:
                    return
            time.sleep(0.5)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
    # The server leads its own process group: this reaches only what it started (its Ray).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def descendants(root: int) -> set[int]:
    """``root`` and every process below it, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid in out:
            continue
        out.add(pid)
        stack.extend(children.get(pid, []))
    return out


def replica_pids(root: int, app: str, deployment: str) -> list[int]:
    """PIDs of the Serve replicas of ``app``/``deployment`` started under process ``root``.

    Ray names a replica's worker process ``ray::ServeReplica:<app>:<deployment>``, with
    ``.<method>`` appended while it runs one (``.__init__`` while it starts).
    """
    title = re.compile(rb"ServeReplica:" + re.escape(app.encode()) + rb":" + re.escape(deployment.encode()) + rb"(\.|\s|$)")
    out = []
    for pid in sorted(descendants(root)):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if title.search(cmdline.split(b"\0")[0]):
            out.append(pid)
    return out


class CpuSampler:
    """Once a second: how many cores the whole machine kept busy, and how many of them went to
    this run's processes (the server, its Ray, this driver and wrk). On a shared machine that is
    the difference between "dagserve is slow" and "dagserve got little CPU"."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.samples: list[tuple[float, float, float]] = []  # (time.monotonic(), machine cores, ours)
        self._tick = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _machine() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def _ours(self) -> dict[int, int]:
        out = {}
        for pid in descendants(self.server_pid) | descendants(os.getpid()):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[pid] = int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, ValueError, IndexError):
                continue
        return out

    async def run(self, until: asyncio.Event) -> None:
        total0, idle0 = self._machine()
        ours0, t0 = self._ours(), time.monotonic()
        for _ in range(100_000):  # bounded; ``until`` ends it long before
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), 1.0)
            total1, idle1 = self._machine()
            ours1, t1 = self._ours(), time.monotonic()
            cpus = os.cpu_count() or 1
            busy = cpus * (1 - (idle1 - idle0) / max(1, total1 - total0))
            ours = sum(v - ours0[p] for p, v in ours1.items() if p in ours0) / self._tick / max(1e-3, t1 - t0)
            self.samples.append((t1, round(busy, 2), round(ours, 2)))
            total0, idle0, ours0, t0 = total1, idle1, ours1, t1
            if until.is_set():
                return

    def between(self, start: float, end: float) -> dict[str, float] | None:
        """Mean busy cores of the machine and of this run's processes from ``start`` to ``end``."""
        picked = [(b, o) for t, b, o in self.samples if start < t <= end + 0.5]
        if not picked:
            return None
        busy = sum(b for b, _ in picked) / len(picked)
        ours = sum(o for _, o in picked) / len(picked)
        return {"machine_busy_cores": round(busy, 2), "chaos_cores": round(ours, 2), "others_cores": round(max(0.0, busy - ours), 2)}


# -- scenarios -----------------------------------------------------------------------------------------


@dataclass
class Run:
    """What a scenario hands back: rows for the table, targets, and details for the JSON."""

    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def _body(i: int) -> dict[str, int]:
    return {"x": i}


async def overload(srv: Server, clock: Callable[[], float]) -> Run:
    """0.3x, 3x, then 0.3x the capacity of a 100 req/s node."""
    cap = CONCURRENCY / SERVICE_S
    low, high = 0.3 * cap, 3 * cap
    client = HttpClient(srv.port)
    run = Run()
    try:
        await paced(client, "/overload", _body, rate=low, duration_s=1.0, clock=clock)  # warm-up
        before = await paced(client, "/overload", _body, rate=low, duration_s=5.0, clock=clock)
        spy = await _start_profile(srv, 6.0)
        during = await paced(client, "/overload", _body, rate=high, duration_s=8.0, clock=clock)
        profile = await _finish_profile(srv, spy)
        ended = clock()
        after = await paced(client, "/overload", _body, rate=low, duration_s=12.0, clock=clock)
    finally:
        await client.close()
    unloaded = Row.of(f"overload: before, {low:g} req/s (0.3x)", before)
    loaded = Row.of(f"overload: during, {high:g} req/s (3x)", during)
    base_p99 = percentile([o.latency for o in before if o.status == 200], 99)

    def healthy(group: list[Outcome]) -> bool:
        ok = [o.latency for o in group if o.status == 200]
        p99 = percentile(ok, 99)
        return len(ok) == len(group) and p99 is not None and base_p99 is not None and p99 <= 1.1 * base_p99

    window = 2.0
    recovery = recovery_time(after, ended, window, healthy, consecutive=2)
    recovered = Row.of(f"overload: after, {low:g} req/s (0.3x)", after, recovery_s=recovery)
    run.rows += [unloaded, loaded, recovered]
    rejections = [o for o in during if o.status == 503]
    with_retry_after = sum(1 for o in rejections if o.retry_after)
    admitted_ratio = (
        None if loaded.p99_ms is None or unloaded.p99_ms is None else round(loaded.p99_ms / unloaded.p99_ms, 2)
    )
    run.targets += [
        Target.at_most("overload", "p99 of a 503 rejection", loaded.p99_rejected_ms, 50, "ms"),
        Target.at_most("overload", "admitted p99 / unloaded p99", admitted_ratio, 2, "x"),
        Target.at_most("overload", "p99 back within 10 % after the overload", recovery, 10, "s"),
    ]
    run.details = {
        "capacity_rps": cap,
        "offered_rps": {"low": low, "high": high},
        "node": {"service_s": SERVICE_S, "max_ongoing_requests": CONCURRENCY, "max_queued_requests": QUEUE, "num_replicas": 1},
        "rejections_with_retry_after": with_retry_after,
        "client_send_lag_p99_ms": ms(percentile([o.lag for o in during], 99)),
        "rejection_types": dict(Counter(o.error_type or "?" for o in rejections)),
        "admitted_rps": round(loaded.succeeded / 8.0, 1),
        "recovery_window_s": window,
        "after_windows_p99_ms": [ms(percentile([o.latency for o in g if o.status == 200], 99)) for g in windows(after, ended, window)],
    }
    if profile:
        run.details["ingress_profile"] = profile
    return run


async def _start_profile(srv: Server, seconds: float) -> asyncio.subprocess.Process | None:
    """py-spy sampling the ingress process for ``seconds`` (when asked for and installed)."""
    if srv.profile_path is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("chaos: py-spy is not installed: no profile", file=sys.stderr)
        return None
    return await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(srv.process.pid), "--duration", str(int(seconds)), "--rate", "50",
        "--format", "raw", "--output", str(srv.profile_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )


async def _finish_profile(srv: Server, spy: asyncio.subprocess.Process | None) -> dict[str, Any] | None:
    if spy is None or srv.profile_path is None:
        return None
    try:
        await asyncio.wait_for(spy.wait(), 30)
    except TimeoutError:
        spy.kill()
        return None
    if not srv.profile_path.exists():
        return None
    return summarize_profile(srv.profile_path.read_text(errors="replace"))


#: Where the ingress spends its time, by a substring of the frames on the stack.
PROFILE_PARTS = {
    "logging": "logging/__init__.py",
    "ray serve router": "ray/serve/_private/",
    "grpc / ray core": "grpc",
    "uvicorn + starlette": "uvicorn/",
    "dagserve": "dagserve/",
    "json": "json/",
}


def summarize_profile(raw: str, top: int = 12) -> dict[str, Any]:
    """From py-spy's raw (collapsed) stacks: the busiest leaf frames, and the share of samples
    with each of :data:`PROFILE_PARTS` on the stack (they overlap: a stack may hold several)."""
    total = 0
    leaves: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[frames[-1]] += n
        for name, needle in PROFILE_PARTS.items():
            if needle in stack:
                parts[name] += n
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "on_stack_pct": {k: round(100 * parts[k] / total, 1) for k in PROFILE_PARTS},
        "top_leaf_frames_pct": [(f, round(100 * n / total, 1)) for f, n in leaves.most_common(top)],
    }


#: (time.monotonic(), running replicas, replica ids) of a node, as the admin route reports them.
Sample = tuple[float, int, tuple[str, ...]]


async def _poll_replicas(srv: Server, graph: str, node: str, until: asyncio.Event, seen: list[Sample]) -> None:
    """Append a :data:`Sample` of ``node`` to ``seen`` every 0.25 s until ``until`` is set."""
    client = HttpClient(srv.port, token=srv.admin_token, timeout_s=10)
    try:
        for _ in range(2000):  # bounded; ``until`` ends it long before
            if until.is_set():
                break
            with contextlib.suppress(OSError, ClientError, TimeoutError, ValueError, KeyError, asyncio.IncompleteReadError):
                status, _, payload = await client.request("GET", f"/-/admin/graphs/{graph}")
                if status == 200:
                    n = json.loads(payload)["nodes"][node]
                    seen.append((time.monotonic(), int(n["running_replicas"]), tuple(n["replica_ids"])))
            await asyncio.sleep(0.25)
    finally:
        await client.close()


async def kill(srv: Server, clock: Callable[[], float], retries: int) -> Run:
    """SIGKILL one of a node's two replicas under steady load (75 % of their capacity).

    The load runs until the replacement replica runs and three 1 s windows in a row are healthy
    (every request answered 200, p99 within 2x the p99 before the kill), or 30 s after the kill.
    Recovery is the later of the two.
    """
    graph, node = f"kill_r{retries}", "Worker"
    capacity_rps = WORKER_REPLICAS * WORKER_CONCURRENCY / WORKER_SERVICE_S
    rate = 0.75 * capacity_rps
    pre_s, max_post_s = 4.0, 30.0
    client = HttpClient(srv.port)
    run = Run()
    pids = replica_pids(srv.process.pid, graph, node)
    if len(pids) != WORKER_REPLICAS:
        run.rows.append(Row(f"kill (retries={retries})", note=f"found replica pids {pids}, expected {WORKER_REPLICAS}"))
        return run
    stop_polling, stop_load = asyncio.Event(), asyncio.Event()
    samples: list[Sample] = []
    arrived: list[Outcome] = []
    base_p99: float | None = None

    def healthy(group: list[Outcome]) -> bool:
        ok = [o.latency for o in group if o.status == 200]
        p99 = percentile(ok, 99)
        return len(ok) == len(group) and p99 is not None and base_p99 is not None and p99 <= 2 * base_p99

    try:
        await paced(client, f"/{graph}", _body, rate=rate, duration_s=1.0, clock=clock)  # warm-up
        poller = asyncio.create_task(_poll_replicas(srv, graph, node, stop_polling, samples))
        start = clock()
        load = asyncio.create_task(
            paced(client, f"/{graph}", _body, rate=rate, duration_s=pre_s + max_post_s, clock=clock, stop=stop_load, done=arrived)
        )
        await asyncio.sleep(pre_s)
        victim = pids[0]
        before_ids = samples[-1][2] if samples else ()
        killed_at = clock()
        killed_mono = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        base_p99 = percentile([o.latency for o in arrived if o.due < killed_at and o.status == 200], 99)
        replaced_s: float | None = None
        for _ in range(int(max_post_s / 0.25)):  # bounded
            await asyncio.sleep(0.25)
            if replaced_s is None:
                fresh = [
                    t for t, running, ids in samples
                    if t > killed_mono and running >= WORKER_REPLICAS and set(ids) - set(before_ids)
                ]
                replaced_s = fresh[0] - killed_mono if fresh else None
            if replaced_s is not None:
                # Windows that are complete: requests due more than 2 s ago have answered or failed.
                settled = [o for o in arrived if o.due < clock() - 2.0]
                back = recovery_time(settled, killed_at, 1.0, healthy)
                if back is not None and len(windows(settled, killed_at, 1.0)) * 1.0 >= back + 3:
                    break
        stop_load.set()
        outcomes = await load
    finally:
        stop_polling.set()
        with contextlib.suppress(Exception):
            await poller
        await client.close()
    latency_back = recovery_time(outcomes, killed_at, 1.0, healthy)
    recovery = None if replaced_s is None or latency_back is None else round(max(replaced_s, latency_back), 2)
    post = [o for o in outcomes if o.due >= killed_at]
    lost = sum(1 for o in post if o.status not in (200, 503))
    row = Row.of(f"kill one of 2 replicas (retries={retries}), {rate:g} req/s", outcomes, recovery_s=recovery)
    row.note = (
        f"replacement running {_num(replaced_s)} s after the kill; every request ok and p99 within 2x of "
        f"before from {_num(latency_back)} s"
    )
    run.rows.append(row)
    run.targets.append(Target.at_most(f"kill (retries={retries})", "back to full capacity", recovery, 15, "s"))
    if retries:
        run.targets.append(Target.at_most(f"kill (retries={retries})", "requests failed (not 200 or 503)", lost, 0, ""))
    run.details = {
        "victim_pid": victim,
        "offered_rps": rate,
        "capacity_rps": capacity_rps,
        "p99_before_kill_ms": ms(base_p99),
        "client_send_lag_p99_ms": ms(percentile([o.lag for o in outcomes], 99)),
        "replaced_s": replaced_s,
        "latency_back_s": latency_back,
        "answers_after_kill": dict(Counter(f"{o.status} {o.error_type or ''}".strip() for o in post)),
        "timeline": _timeline(outcomes, start, killed_at),
    }
    return run


def _timeline(outcomes: Sequence[Outcome], start: float, mark: float) -> list[dict[str, Any]]:
    """Per second from ``start``: sent, ok, rejected, failed, p99 of ok (ms); ``t`` relative to ``mark``."""
    out = []
    for k, group in enumerate(windows(outcomes, start, 1.0)):
        ok = [o.latency for o in group if o.status == 200]
        out.append(
            {
                "t": round(start + k - mark, 1),
                "sent": len(group),
                "ok": len(ok),
                "rejected": sum(1 for o in group if o.status in REJECTED),
                "failed": sum(1 for o in group if o.status != 200 and o.status not in REJECTED),
                "p99_ms": ms(percentile(ok, 99)),
            }
        )
    return out


async def trickle(
    port: int, n: int, until: asyncio.Event, *, interval_s: float = 0.5, path: str = "/steady"
) -> dict[str, int]:
    """Hold ``n`` connections that send a request one byte every ``interval_s`` (half of them the
    head, half the body after a complete head); a connection the server ends is opened again.

    Returns how the server ended trickling connections: by status (``"408"``...), or ``"closed"``
    when it closed without an answer.
    """
    ended: Counter[str] = Counter()
    head = f"POST {path} HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: application/json\r\n"

    async def one(k: int) -> None:
        for _ in range(10_000):  # bounded; ``until`` ends it long before
            if until.is_set():
                return
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                ended["connect-error"] += 1
                await asyncio.sleep(interval_s)
                continue
            first, drip = (head + "content-length: 100000\r\n\r\n", b" ") if k % 2 else (head + "x-slow: ", b"a")
            answer = asyncio.ensure_future(reader.readline())  # the status line, whenever it comes
            try:
                writer.write(first.encode())
                for _ in range(100_000):
                    await asyncio.wait([answer], timeout=interval_s)  # wakes early if the server answers
                    if until.is_set() or answer.done():
                        break
                    writer.write(drip)
                    await writer.drain()
                if until.is_set() and not answer.done():
                    return
                parts = (await asyncio.wait_for(answer, 1.0)).split(b" ")
                ended[parts[1].decode() if len(parts) > 1 else "closed"] += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                ended["closed"] += 1
            finally:
                answer.cancel()
                writer.close()

    await asyncio.gather(*(one(k) for k in range(n)))
    return dict(ended)


async def slow_clients(srv: Server, clock: Callable[[], float], connections: int = 200) -> Run:
    """wrk (one connection) alone, then while ``connections`` trickle bytes, alternating twice."""
    from benchmarks import wrk

    url = f"http://{HOST}:{srv.port}/steady"
    duration = 5.0
    await asyncio.to_thread(wrk.run, url, {"x": 1}, connections=1, duration_s=1)  # warm-up
    results: dict[str, list[Any]] = {"alone": [], "trickled": []}
    ended: Counter[str] = Counter()
    opened_at_peak = 0
    for _ in range(2):
        results["alone"].append(await asyncio.to_thread(wrk.run, url, {"x": 1}, connections=1, duration_s=duration))
        until = asyncio.Event()
        tricklers = asyncio.create_task(trickle(srv.port, connections, until))
        await asyncio.sleep(1.0)  # let every connection open
        opened_at_peak = max(opened_at_peak, _open_connections(srv.port))
        results["trickled"].append(await asyncio.to_thread(wrk.run, url, {"x": 1}, connections=1, duration_s=duration))
        until.set()
        ended.update(await tricklers)
    run = Run()
    rows = {}
    for kind, label in (("alone", "normal client alone"), ("trickled", f"normal client + {connections} trickling")):
        rs = results[kind]
        rows[kind] = Row(
            f"slow clients: {label}",
            sent=sum(r.requests for r in rs),
            succeeded=sum(r.requests - r.errors for r in rs),
            failed={"non-2xx/socket": sum(r.errors for r in rs)} if any(r.errors for r in rs) else {},
            p50_ms=round(sum(r.p50_ms for r in rs) / len(rs), 2),
            p99_ms=round(sum(r.p99_ms for r in rs) / len(rs), 2),
        )
        run.rows.append(rows[kind])
    a, b = rows["alone"].p99_ms, rows["trickled"].p99_ms
    increase = None if not a or b is None else round(100 * (b / a - 1), 1)
    run.targets.append(Target.at_most("slow clients", "p99 increase with 200 trickling", increase, 20, "%"))
    run.details = {
        "trickling_connections": connections,
        "established_to_server_at_peak": opened_at_peak,
        "trickle_ended_by": dict(ended),
        "wrk_runs": {k: [asdict(r) | {"report": ""} for r in v] for k, v in results.items()},
        "method": "wrk -t1 -c1 for 5 s, alone then with the trickle, twice; p50/p99 are the means of the two runs",
    }
    return run


def _open_connections(port: int) -> int:
    """Established TCP connections to 127.0.0.1:``port`` (server side), from /proc/net/tcp."""
    local = f"0100007F:{port:04X}"
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "01":
                count += 1
    return count


async def timeouts(srv: Server, clock: Callable[[], float], n: int = 40) -> Run:
    """``n`` requests past a node's timeout_s and ``n`` past a request deadline, 10 at a time."""
    run = Run()
    client = HttpClient(srv.port)
    try:
        for graph, label, limit in (
            ("node_timeout", f"node timeout_s={NODE_TIMEOUT_S:g}", NODE_TIMEOUT_S),
            ("deadline", f"request deadline {REQUEST_DEADLINE_S:g} s", REQUEST_DEADLINE_S),
        ):
            outcomes: list[Outcome] = []
            for i in range(0, n, 10):
                now = clock()
                outcomes += await asyncio.gather(
                    *(client.post(f"/{graph}", {"case": "run", "x": j}, now, clock) for j in range(i, min(n, i + 10)))
                )
            # Cancellation reaches the replica asynchronously: give it a moment, bounded.
            stats: Any = None
            for _ in range(20):
                status, _, payload = await client.request("POST", f"/{graph}", {"case": "stats", "x": 0})
                stats = json.loads(payload) if status == 200 else {"status": status}
                if status == 200 and stats[0]["cancelled"] + stats[0]["finished"] >= stats[0]["started"]:
                    break
                await asyncio.sleep(0.25)
            row = Row.of(f"timeouts: {label}", outcomes)
            named = Counter(o.node for o in outcomes if o.status == 504)
            row.note = f"504 bodies name {dict(named)}; replica saw {stats}"
            run.rows.append(row)
            slack = None if row.p99_rejected_ms is None else round(row.p99_rejected_ms - 1000 * limit, 1)
            run.targets.append(Target.at_most(f"timeouts ({label})", "p99 of a 504 past the deadline", slack, 100, "ms"))
            run.details[graph] = {"limit_s": limit, "named_nodes": dict(named), "replica_stats": stats}
    finally:
        await client.close()
    return run


# -- driver ----------------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    import ray

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "dagserve": dagserve.__version__ if hasattr(dagserve, "__version__") else None,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


async def _scenarios(srv: Server, chosen: Sequence[str], deadline: float, log: Callable[[str], None]) -> tuple[Run, list[str]]:
    total = Run()
    skipped: list[str] = []
    clock = time.monotonic
    sampler = CpuSampler(srv.process.pid)
    stop_sampling = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop_sampling))
    plan: list[tuple[str, Callable[[], Awaitable[Run]], float]] = []
    if "overload" in chosen:
        plan.append(("overload", lambda: overload(srv, clock), 30))
    if "kill" in chosen:
        plan.append(("kill (retries=0)", lambda: kill(srv, clock, 0), 32))
        plan.append(("kill (retries=2)", lambda: kill(srv, clock, 2), 32))
    if "slow_clients" in chosen:
        plan.append(("slow clients", lambda: slow_clients(srv, clock), 25))
    if "timeouts" in chosen:
        plan.append(("timeouts", lambda: timeouts(srv, clock), 12))
    for name, scenario, needs_s in plan:
        if time.monotonic() + needs_s > deadline:
            skipped.append(name)
            log(f"chaos: skipping {name}: the time budget is spent")
            continue
        log(f"chaos: {name} ... (load average {os.getloadavg()[0]:.1f})")
        load_before = round(os.getloadavg()[0], 2)
        t = time.monotonic()
        try:
            run = await asyncio.wait_for(scenario(), max(5.0, deadline - time.monotonic()))
        except TimeoutError:
            skipped.append(name)
            log(f"chaos: {name} ran out of the time budget")
            continue
        log(f"chaos: {name} done in {time.monotonic() - t:.1f} s")
        total.rows += run.rows
        total.targets += run.targets
        total.details[name] = {
            **run.details,
            "loadavg_1m": [load_before, round(os.getloadavg()[0], 2)],
            "cpu": sampler.between(t, time.monotonic()),
        }
    stop_sampling.set()
    await sampling
    return total, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    srv = sub.add_parser("serve", help="(internal) the server process")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--backend", choices=("ray", "local"), default="ray")
    parser.add_argument("--backend", choices=("ray", "local"), default="ray")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--nice", type=int, default=0,
        help="run the server, its Ray and this driver at this niceness (negative: ahead of other work; needs root)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="sample the ingress with py-spy during the overload (figures in the JSON)"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve_main(args.port, args.backend)
        return 0
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    if args.backend == "local" and "kill" in chosen:
        chosen.remove("kill")  # no replica processes to kill in-process
        print("chaos: the local backend has no replica processes: skipping kill", file=sys.stderr)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # the server and its Ray inherit it
    began = time.monotonic()
    deadline = began + TOTAL_BUDGET_S
    machine = _machine()
    machine["niceness"] = os.getpriority(os.PRIO_PROCESS, 0)
    machine["serve_env"] = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"dagserve-chaos-server-{os.getpid()}.log"
    log(f"chaos: starting the server ({args.backend} backend); its log: {log_path}")
    with server(args.backend, log_path) as srv:
        log(f"chaos: server ready on 127.0.0.1:{srv.port} after {srv.startup_s:.1f} s")
        if args.profile:
            srv.profile_path = log_path.with_suffix(".overload.pyspy")
        total, skipped = asyncio.run(_scenarios(srv, chosen, deadline, log))
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    elapsed = time.monotonic() - began
    print(table(total.rows))
    print()
    print(targets_table(total.targets))
    for r in total.rows:
        if r.note:
            print(f"- {r.scenario}: {r.note}")
    print()
    print(cpu_table(total.details))
    if skipped:
        print(f"skipped (time budget): {', '.join(skipped)}")
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "backend": args.backend,
        "machine": machine,
        "server_startup_s": round(srv.startup_s, 1),
        "elapsed_s": round(elapsed, 1),
        "rows": [asdict(r) for r in total.rows],
        "targets": [asdict(t) for t in total.targets],
        "details": total.details,
        "skipped": skipped,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(args.output)
    log(f"chaos: {elapsed:.0f} s in all; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
