"""socket-floor: each step in a process of its own, no framework; the least process isolation costs.

    python -m benchmarks.servers.socket_floor_app --workload chain[,hop] --port P

The chain's three steps (pre, model, post; a hop case's steps) each run in a worker process of
their own, serving calls on a Unix socket; the Starlette route (the same as ``floor``'s) calls them
in turn. A call and its answer are the frames dagserve's direct transport sends (an 8-byte
big-endian length, then a pickled ``(CALL, id, pickled (header, args, kwargs))`` and
``(id, OK, pickled result)``), read by a minimal ``asyncio.Protocol`` at both ends: one connection
per worker, many calls in flight on it, matched by id. Nothing else: no peer check, no limits, no
retries, no Ray. A system with one process per node pays at least this.

A worker is the same module run with ``--serve STEP --socket PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.servers import work
from benchmarks.servers._cli import exit_on_sigterm, fail
from benchmarks.servers._starlette import Compute, build_app, serve_forever
from benchmarks.workloads import parse_workloads

SUPPORTED = ("chain", "hop")
LENGTH = struct.Struct("!Q")
CALL, OK, ERROR = 0, 0, 1
STEPS: dict[str, Callable[[int], Any]] = {"pre": work.pre, "model": work.model, "post": work.post, "step": work.step}


class _Framed(asyncio.Protocol):
    """Splits the byte stream into frames and hands each unpickled one to ``on_frame``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        start = 0
        while len(buf) - start >= LENGTH.size:
            (n,) = LENGTH.unpack_from(buf, start)
            if len(buf) - start - LENGTH.size < n:
                break
            body = bytes(buf[start + LENGTH.size : start + LENGTH.size + n])
            start += LENGTH.size + n
            self.on_frame(pickle.loads(body))
        del buf[:start]

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=5)
        assert self.transport is not None
        self.transport.write(LENGTH.pack(len(data)) + data)

    def on_frame(self, frame: Any) -> None:
        raise NotImplementedError


class _WorkerSide(_Framed):
    def __init__(self, fn: Callable[[int], Any]) -> None:
        super().__init__()
        self._fn = fn

    def on_frame(self, frame: Any) -> None:
        _op, rid, payload = frame
        _header, args, kwargs = pickle.loads(payload)
        try:
            self.send((rid, OK, pickle.dumps(self._fn(*args, **kwargs), protocol=5)))
        except Exception as exc:  # noqa: BLE001 - the caller sees the failure
            self.send((rid, ERROR, pickle.dumps(exc, protocol=5)))


class _CallerSide(_Framed):
    def __init__(self, step: str) -> None:
        super().__init__()
        self._step = step
        self._next = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}

    def call(self, x: Any, request_id: str) -> asyncio.Future[Any]:
        self._next += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        header = ("__call__", self._step, request_id)
        self.send((CALL, self._next, pickle.dumps((header, (x,), {}), protocol=5)))
        return fut

    def on_frame(self, frame: Any) -> None:
        rid, status, data = frame
        fut = self._waiting.pop(rid)
        value = pickle.loads(data)
        fut.set_result(value) if status == OK else fut.set_exception(value)


def serve_step(step: str, path: str) -> None:
    """A worker: serve ``step`` on the Unix socket ``path`` until killed."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: _WorkerSide(STEPS[step]), path)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def _start_workers(steps: list[str], sock_dir: Path) -> tuple[list[subprocess.Popen[bytes]], dict[str, str]]:
    paths = {step: str(sock_dir / f"{step}.sock") for step in steps}
    procs = [
        subprocess.Popen([sys.executable, "-m", "benchmarks.servers.socket_floor_app", "--serve",
                          "step" if step.startswith("step") else step, "--socket", path])
        for step, path in paths.items()
    ]
    deadline = time.monotonic() + 30
    while not all(Path(p).exists() for p in paths.values()):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            fail(f"socket-floor workers did not start: {[p.poll() for p in procs]}")
        time.sleep(0.05)
    return procs, paths


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workload")
    parser.add_argument("--port", type=int)
    parser.add_argument("--serve", choices=sorted(STEPS), help="(worker) the step to serve")
    parser.add_argument("--socket", help="(worker) the Unix socket to serve it on")
    args = parser.parse_args()
    if args.serve:
        serve_step(args.serve, args.socket)
        return
    if args.workload is None or args.port is None:
        fail("--workload and --port are required")
    workloads = parse_workloads(args.workload)
    routes: dict[str, list[str]] = {}  # case -> the workers it calls, in order
    for w in workloads:
        if w.name not in SUPPORTED:
            fail(f"socket-floor does not serve workload {w.name!r}; it serves {', '.join(SUPPORTED)}")
        for case in w.cases:
            if w.name == "chain":
                routes[case.name] = ["pre", "model", "post"]
            else:
                assert case.hops is not None
                routes[case.name] = [f"step{k}" for k in range(1, case.hops + 1)]
    sock_dir = Path(tempfile.mkdtemp(prefix="dagserve-socket-floor-"))
    procs, paths = _start_workers(sorted({n for names in routes.values() for n in names}), sock_dir)
    callers: dict[str, _CallerSide] = {}
    connected: list[asyncio.Task[None]] = []  # one connection per worker, made by the first request

    async def connect() -> None:
        loop = asyncio.get_running_loop()
        for step, path in paths.items():
            _, callers[step] = await loop.create_unix_connection(lambda s=step: _CallerSide(s), path)  # type: ignore[misc]

    def compute_for(case: str, names: list[str]) -> Compute:
        hop = case.startswith("hop")

        async def compute(x: int) -> dict[str, Any]:
            if not connected:
                connected.append(asyncio.ensure_future(connect()))
            await connected[0]
            value: Any = x
            for name in names:
                value = await callers[name].call(value, case)
            return work.post(value) if hop else value  # the hop chains end in the ingress, as elsewhere

        return compute

    exit_on_sigterm()
    try:
        serve_forever(build_app({c: compute_for(c, names) for c, names in routes.items()}), args.port)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
