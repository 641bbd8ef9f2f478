"""The direct transport (dagserve/backends/_direct.py) on its own: real Unix sockets, no Ray.

The Ray backend's use of it (calls to replicas skip Serve's router) is covered end to end in
tests/test_backend_ray.py and the fault and timeout suites.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dagserve import NodeError
from dagserve.backends import _direct
from dagserve.backends._direct import DirectPool, QueueFull, ReplicaLost, ReplicaServer


class Replica:
    """A replica's dispatch: ``(method, step, request id)`` header, node code by method name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started: list[Any] = []
        self.cancelled = 0
        self.release = asyncio.Event()

    async def dispatch(self, header: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        method, step, _request_id = header
        self.started.append(args)
        if method == "echo":
            return (self.name, *args)
        if method == "hold":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return (self.name, *args)
        if method == "fail":
            raise NodeError(f"Node {step!r} raised ValueError: bad", node=step, error_type="ValueError")
        if method == "unpicklable":
            return lambda: None  # plain pickle and cloudpickle differ; a lock pickles with neither
        if method == "lock":
            import threading

            return threading.Lock()
        if method == "unloadable":
            return Unloadable()
        raise AssertionError(method)

    def stats(self) -> dict[int, int]:
        return {4: len(self.started)}


def _refuse_to_load() -> None:
    raise ImportError("no module named 'only_on_the_replica'")


class Unloadable:
    """Pickles fine; loading it fails, like a class only the replica's environment has."""

    def __reduce__(self) -> Any:
        return (_refuse_to_load, ())


@dataclass
class Cluster:
    pool: DirectPool
    servers: dict[str, ReplicaServer]
    replicas: dict[str, Replica]


@pytest.fixture
def directory(tmp_path: Path) -> str:
    d = tmp_path / "sockets"
    d.mkdir(mode=0o700)
    return str(d)


async def serve(directory: str, name: str) -> tuple[ReplicaServer, Replica]:
    replica = Replica(name)
    server = ReplicaServer(os.path.join(directory, f"{name}.sock"), replica.dispatch, replica.stats)
    await server.start()
    return server, replica


async def connected(directory: str, n: int, **limits: Any) -> DirectPool:
    pool = DirectPool(directory, max_ongoing=limits.get("max_ongoing", 100), max_queued=limits.get("max_queued"),
                      loop=asyncio.get_running_loop())
    await pool.scan()
    assert len(pool._conns) == n
    return pool


@contextlib.asynccontextmanager
async def replicas(directory: str, *names: str, **limits: Any) -> AsyncIterator[Cluster]:
    """Replica servers named ``names`` and a pool connected to them; all closed on the way out."""
    started = {n: await serve(directory, n) for n in names}
    pool = await connected(directory, len(names), **limits)
    try:
        yield Cluster(pool, {n: s for n, (s, _) in started.items()}, {n: r for n, (_, r) in started.items()})
    finally:
        pool.close()
        for server, _ in started.values():
            server.close()


def header(method: str) -> tuple[str, str, str]:
    return (method, "Step", "req-1")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_a_call_round_trips_and_errors_keep_the_node_name(directory: str) -> None:
    async with replicas(directory, "r1") as c:
        pool = c.pool
        assert pool.usable
        assert await pool.call(header("echo"), (1, {"a": [1.5]}), {}) == ("r1", 1, {"a": [1.5]})
        with pytest.raises(NodeError) as err:
            await pool.call(header("fail"), (), {})
        assert err.value.node == "Step" and err.value.error_type == "ValueError"


async def test_results_that_cannot_be_sent_fail_their_call_only(directory: str) -> None:
    async with replicas(directory, "r1") as c:
        pool = c.pool
        assert callable(await pool.call(header("unpicklable"), (), {}))  # cloudpickle takes a lambda
        with pytest.raises(NodeError, match="cannot be sent back") as err:
            await pool.call(header("lock"), (), {})
        assert err.value.node == "Step"
        import threading

        with pytest.raises(TypeError):
            await pool.call(header("echo"), (threading.Lock(),), {})  # arguments that cannot be sent
        assert await pool.call(header("echo"), (2,), {}) == ("r1", 2)  # the connection is fine


async def test_calls_go_to_the_least_busy_replica(directory: str) -> None:
    async with replicas(directory, "r0", "r1") as c:
        pool = c.pool
        held = [pool.call(header("hold"), (i,), {}) for i in range(4)]
        await settle()
        assert [len(r.started) for r in c.replicas.values()] == [2, 2]
        for r in c.replicas.values():
            r.release.set()
        assert sorted(x for _, x in await asyncio.gather(*held)) == [0, 1, 2, 3]


async def test_max_ongoing_then_a_bounded_queue_then_queue_full(directory: str) -> None:
    async with replicas(directory, "r1", max_ongoing=1, max_queued=1) as c:
        pool = c.pool
        replica = c.replicas["r1"]
        first = pool.call(header("hold"), (1,), {})
        second = pool.call(header("hold"), (2,), {})
        third = pool.call(header("hold"), (3,), {})
        with pytest.raises(QueueFull):
            await third  # rejected at once, without running
        await settle()
        assert replica.started == [(1,)] and first.assigned and not second.assigned
        replica.release.set()
        assert await first == ("r1", 1)
        assert await second == ("r1", 2)  # the freed slot went straight to the queued call


async def test_cancel_reaches_the_replica_and_frees_the_slot(directory: str) -> None:
    async with replicas(directory, "r1", max_ongoing=1) as c:
        pool = c.pool
        replica = c.replicas["r1"]
        call = pool.call(header("hold"), (1,), {})
        queued = pool.call(header("echo"), (2,), {})
        await settle()
        call.cancel()
        assert await queued == ("r1", 2)
        await settle()
        assert replica.cancelled == 1
        with pytest.raises(asyncio.CancelledError):
            await call


async def test_a_stopping_replica_refuses_new_calls_and_finishes_the_ones_it_holds(directory: str) -> None:
    async with replicas(directory, "old", "new") as c:
        pool, old = c.pool, c.servers["old"]
        old_replica, new_replica = c.replicas["old"], c.replicas["new"]
        held = [pool.call(header("hold"), (i,), {}) for i in range(2)]  # one on each replica
        await settle()
        drained = asyncio.ensure_future(old.drain())
        await settle()
        assert not os.path.exists(old.path)
        # The pool has not noticed yet: a call sent to the old replica is refused, then sent on.
        late = _direct.DirectCall(pool, _direct.dumps((header("echo"), ("late",), {})))
        pool._conns["old"].submit(late)
        assert await late == ("new", "late")
        assert not drained.done()  # still holding its call
        old_replica.release.set()
        new_replica.release.set()
        answers = await asyncio.gather(*held)
        assert {name for name, _ in answers} == {"new", "old"} and sorted(x for _, x in answers) == [0, 1]
        await asyncio.wait_for(drained, 2)
        await settle()
        assert list(pool._conns) == ["new"]


async def test_a_replica_that_dies_fails_its_calls_and_is_forgotten(directory: str) -> None:
    server, _ = await serve(directory, "r1")
    pool = await connected(directory, 1)
    try:
        call = pool.call(header("hold"), (1,), {})
        await settle()
        server.close()  # its connections drop, as when the process is killed
        with pytest.raises(ReplicaLost):
            await call
        assert not pool.usable
    finally:
        pool.close()


async def test_a_stale_socket_is_removed_and_a_new_replica_found(directory: str) -> None:
    stale = os.path.join(directory, "dead.sock")
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)  # bound but never listening: what a killed replica leaves behind
    s.close()
    pool = await connected(directory, 0)
    try:
        await pool.scan()  # refused a second time: stale
        assert not os.path.exists(stale)
        server, _ = await serve(directory, "r2")
        await pool.scan()
        assert await pool.call(header("echo"), (1,), {}) == ("r2", 1)
        server.close()
    finally:
        pool.close()


async def test_replica_stats_reads_every_replica(directory: str) -> None:
    servers = [await serve(directory, f"r{i}") for i in range(2)]
    try:
        stats = await asyncio.get_running_loop().run_in_executor(None, _direct.replica_stats, directory)
        assert stats == [{4: 0}, {4: 0}]
    finally:
        for s, _ in servers:
            s.close()


async def test_sockets_are_private_to_this_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = _direct.socket_dir("127.0.0.1:6379", "app", "node")
    assert real is not None and len(os.path.join(real, "0123456789abcdef.sock")) < 108  # AF_UNIX limit
    monkeypatch.setattr(_direct.tempfile, "gettempdir", lambda: str(tmp_path))
    path = _direct.socket_dir("127.0.0.1:6379", "app", "node")
    assert path is not None
    root = tmp_path / f"dagserve-{os.getuid()}"
    for p in (root, Path(path)):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700
    server, _ = await serve(path, "r1")
    try:
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
        _reader, writer = await asyncio.open_unix_connection(server.path)
        assert _direct._same_user(writer.transport)  # the peer check: uid of the connecting process
        writer.close()
    finally:
        server.close()
    # A directory others could write to is refused, never repaired (a socket planted meanwhile).
    os.chmod(root, 0o755)
    assert _direct.socket_dir("127.0.0.1:6379", "app", "node") is None
    os.chmod(root, 0o700)
    # A directory owned by someone else is never used.
    monkeypatch.setattr(_direct.os, "getuid", lambda: os.stat(root).st_uid + 1)
    assert _direct.socket_dir("127.0.0.1:6379", "app", "node") is None


async def test_a_call_crossing_an_idle_replicas_shutdown_is_sent_elsewhere_not_lost(directory: str) -> None:
    async with replicas(directory, "old", "new") as c:
        pool, old = c.pool, c.servers["old"]
        drained = asyncio.ensure_future(old.drain())
        # Sent before the replica's DRAINING notice arrives: on the wire while it stops.
        crossing = _direct.DirectCall(pool, _direct.dumps((header("echo"), ("x",), {})))
        pool._conns["old"].submit(crossing)
        assert await crossing == ("new", "x")
        await asyncio.wait_for(drained, 1.0)  # the ingress hung up at once; no 5 s wait
        assert list(pool._conns) == ["new"]


async def test_calls_made_one_at_a_time_take_turns_over_the_replicas(directory: str) -> None:
    async with replicas(directory, "r0", "r1", "r2") as c:
        pool = c.pool
        names = [(await pool.call(header("echo"), (i,), {}))[0] for i in range(9)]
        assert sorted(names) == ["r0"] * 3 + ["r1"] * 3 + ["r2"] * 3


async def test_a_value_the_ingress_cannot_load_fails_its_call_only(directory: str) -> None:
    async with replicas(directory, "r1") as c:
        pool = c.pool
        replica = c.replicas["r1"]
        held = pool.call(header("hold"), (1,), {})
        with pytest.raises(NodeError, match="cannot load") as err:
            await pool.call(header("unloadable"), (), {})
        assert err.value.node == "Step" and err.value.error_type == "ImportError"
        replica.release.set()
        assert await held == ("r1", 1)  # the connection and the other call are fine
        assert pool.usable


def test_objects_of_main_travel_by_value(tmp_path: Path) -> None:
    """Plain pickle names a ``__main__`` class; the replica's ``__main__`` is not ours."""
    import pickle
    import subprocess
    import sys
    import types

    main = sys.modules["__main__"]
    cls = types.new_class("PointInMain", (), {}, lambda ns: ns.update({"__module__": "__main__"}))
    cls.__qualname__ = "PointInMain"
    monkey = pytest.MonkeyPatch()
    monkey.setattr(main, "PointInMain", cls, raising=False)
    try:
        obj = cls()
        obj.x = 3  # type: ignore[attr-defined]
        assert b"__main__" in pickle.dumps(obj)
        data = _direct.dumps(obj)
    finally:
        monkey.undo()
    out = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read()).x)"],
        input=data, capture_output=True, check=True, timeout=60,
    )
    assert out.stdout.strip() == b"3"


async def test_a_cancelled_queued_call_leaves_the_queue(directory: str) -> None:
    async with replicas(directory, "r1", max_ongoing=1, max_queued=1) as c:
        pool = c.pool
        replica = c.replicas["r1"]
        first = pool.call(header("hold"), (1,), {})
        queued = pool.call(header("hold"), (2,), {})
        queued.cancel()
        later = pool.call(header("hold"), (3,), {})  # room again: not QueueFull
        replica.release.set()
        assert await first == ("r1", 1)
        assert await later == ("r1", 3)


async def test_a_closed_pool_fails_calls_at_once_even_retries(directory: str) -> None:
    server, _ = await serve(directory, "r1")
    pool = await connected(directory, 1)
    try:
        held = pool.call(header("hold"), (1,), {})
        await settle()
        pool.close()
        with pytest.raises(ReplicaLost):
            await held
        with pytest.raises(_direct.PoolClosed):
            await asyncio.wait_for(pool.call(header("echo"), (2,), {}), 1.0)  # a retry: not queued forever
    finally:
        server.close()


async def test_a_cancel_read_with_its_call_leaves_nothing_in_flight(directory: str) -> None:
    async with replicas(directory, "r1") as c:
        pool = c.pool
        server = c.servers["r1"]
        calls = [pool.call(header("hold"), (i,), {}) for i in range(5)]
        for c in calls:
            c.cancel()  # same loop iteration: CALL and CANCEL leave in one write
        await settle()
        assert server.in_flight() == 0
        await asyncio.wait_for(server.drain(close_after_s=0.05), 1.0)


async def test_raised_limits_start_queued_calls_at_once(directory: str) -> None:
    async with replicas(directory, "r1", max_ongoing=1) as c:
        pool = c.pool
        replica = c.replicas["r1"]
        calls = [pool.call(header("hold"), (i,), {}) for i in range(3)]
        await settle()
        assert len(replica.started) == 1
        pool.set_limits(3, None)
        await settle()
        assert len(replica.started) == 3
        replica.release.set()
        assert [x for _, x in await asyncio.gather(*calls)] == [0, 1, 2]


async def test_a_socket_is_removed_only_when_refused_twice(directory: str) -> None:
    import socket

    path = os.path.join(directory, "starting.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)  # bound, not yet listening: a replica between bind and listen
    try:
        pool = await connected(directory, 0)
        assert os.path.exists(path)  # one refusal: kept
        await pool.scan()
        assert not os.path.exists(path)  # refused again a scan later: stale
        pool.close()
    finally:
        s.close()
