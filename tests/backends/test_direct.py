"""The direct transport (dagserve/backends/ray/direct/) on its own: real Unix sockets, no Ray.

The Ray backend's use of it (calls to replicas skip Serve's router) is covered end to end in
tests/backends/test_backend_ray.py and the fault and timeout suites.
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
from dagserve.backends.ray.header import CallHeader
from dagserve.backends.ray.direct import directory as _directory
from dagserve.backends.ray.direct.directory import replica_stats, socket_dir
from dagserve.backends.ray.direct.pool import DirectCall, DirectPool, PoolClosed, ReplicaLost
from dagserve.backends.ray.direct.frames import CALL, FRAME_LENGTH, FrameLimits, dumps, same_user
from dagserve.backends.ray.direct.replica_server import ReplicaServer
from dagserve.runtime.replica_slots import QueueFull

from ..foreign_peer import foreign_peer, foreign_socket, needs_root


class Replica:
    """A replica's dispatch: a ``CallHeader``, node code by method name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started: list[Any] = []
        self.cancelled = 0
        self.release = asyncio.Event()
        self.running = 0
        self.peak = 0  # most calls running at once

    async def dispatch(self, header: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            return await self._dispatch(header, args)
        finally:
            self.running -= 1

    async def _dispatch(self, header: Any, args: tuple[Any, ...]) -> Any:
        method, step = header.method, header.step
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
        if method == "blob":
            return b"x" * args[0]
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


async def serve(directory: str, name: str, **options: Any) -> tuple[ReplicaServer, Replica]:
    """A replica server; ``options``: ``limit`` (its max_ongoing_requests), ``limits`` (FrameLimits)."""
    replica = Replica(name)
    server = ReplicaServer(os.path.join(directory, f"{name}.sock"), replica.dispatch, replica.stats, **options)
    await server.start()
    return server, replica


async def connected(directory: str, n: int, **limits: Any) -> DirectPool:
    pool = DirectPool(directory, max_ongoing=limits.get("max_ongoing", 100), max_queued=limits.get("max_queued"),
                      loop=asyncio.get_running_loop(), limits=limits.get("frames"))
    await pool.scan()
    assert len(pool._conns) == n
    return pool


@contextlib.asynccontextmanager
async def replicas(directory: str, *names: str, server: dict[str, Any] | None = None,
                   **limits: Any) -> AsyncIterator[Cluster]:
    """Replica servers named ``names`` (``server``: their options) and a pool connected to them;
    all closed on the way out."""
    started = {n: await serve(directory, n, **(server or {})) for n in names}
    pool = await connected(directory, len(names), **limits)
    try:
        yield Cluster(pool, {n: s for n, (s, _) in started.items()}, {n: r for n, (_, r) in started.items()})
    finally:
        pool.close()
        for server, _ in started.values():
            server.close()


def header(method: str) -> CallHeader:
    return CallHeader(method, "Step", "req-1")


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
        late = DirectCall(pool, dumps((header("echo"), ("late",), {})))
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
        stats = await asyncio.get_running_loop().run_in_executor(None, replica_stats, directory)
        assert [{k: v for k, v in s.items() if k != "replica"} for s in stats] == [{"batches": {4: 0}, "refusals": {}, "handle_calls": []}] * 2
        assert sorted(s["replica"] for s in stats) == ["r0", "r1"]
    finally:
        for s, _ in servers:
            s.close()


async def test_sockets_are_private_to_this_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket_dir("127.0.0.1:6379", "app", "node")
    assert real is not None and len(os.path.join(real, "0123456789abcdef.sock")) < 108  # AF_UNIX limit
    monkeypatch.setattr(_directory.tempfile, "gettempdir", lambda: str(tmp_path))
    path = socket_dir("127.0.0.1:6379", "app", "node")
    assert path is not None
    root = tmp_path / f"dagserve-{os.getuid()}"
    for p in (root, Path(path)):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700
    server, _ = await serve(path, "r1")
    try:
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
        _reader, writer = await asyncio.open_unix_connection(server.path)
        assert same_user(writer.transport)  # the peer check: uid of the connecting process
        writer.close()
    finally:
        server.close()
    # A directory others could write to is refused, never repaired (a socket planted meanwhile).
    os.chmod(root, 0o755)
    assert socket_dir("127.0.0.1:6379", "app", "node") is None
    os.chmod(root, 0o700)
    # A directory owned by someone else is never used.
    monkeypatch.setattr(_directory.os, "getuid", lambda: os.stat(root).st_uid + 1)
    assert socket_dir("127.0.0.1:6379", "app", "node") is None


async def test_a_call_crossing_an_idle_replicas_shutdown_is_sent_elsewhere_not_lost(directory: str) -> None:
    async with replicas(directory, "old", "new") as c:
        pool, old = c.pool, c.servers["old"]
        drained = asyncio.ensure_future(old.drain())
        # Sent before the replica's DRAINING notice arrives: on the wire while it stops.
        crossing = DirectCall(pool, dumps((header("echo"), ("x",), {})))
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
        data = dumps(obj)
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
        with pytest.raises(PoolClosed):
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


# -- the replica's max_ongoing_requests, over every caller ---------------------------------------


async def test_a_full_replica_refuses_a_second_ingress_whose_call_runs_when_a_slot_frees(directory: str) -> None:
    """Two ingresses (pools) each allowed 1 call on a replica whose limit is 1: the second one's
    call is refused (counted), waits in its pool, and runs once the replica says it has room."""
    async with replicas(directory, "r1", server={"limit": lambda: 1}, max_ongoing=1) as c:
        first, server, replica = c.pool, c.servers["r1"], c.replicas["r1"]
        second = await connected(directory, 1, max_ongoing=1)
        try:
            held = first.call(header("hold"), (1,), {})
            await settle()
            waiting = second.call(header("echo"), (2,), {})
            await settle()
            assert second.refusals == 1 and server.refusals == 1
            assert not waiting.future.done() and not waiting.assigned  # queued in its pool, not failed
            assert replica.started == [(1,)]
            replica.release.set()
            assert await held == ("r1", 1)
            assert await asyncio.wait_for(waiting, 2) == ("r1", 2)
            assert replica.peak == 1
        finally:
            second.close()


async def test_a_refused_call_goes_to_a_replica_with_room(directory: str) -> None:
    async with replicas(directory, "r0", "r1", server={"limit": lambda: 1}) as c:
        other = await connected(directory, 2)
        try:
            held = other.call(header("hold"), (0,), {})  # another ingress fills one replica
            await settle()
            (busy,) = [name for name, r in c.replicas.items() if r.started]
            answers = [await asyncio.wait_for(c.pool.call(header("echo"), (i,), {}), 2) for i in range(4)]
            assert {name for name, _ in answers} == {"r0", "r1"} - {busy}  # none failed, none ran there
            assert c.pool.refusals >= 1  # taking turns, at least one call was sent there first
            assert c.replicas[busy].started == [(0,)]
            c.replicas[busy].release.set()
            assert (await held)[1] == 0
        finally:
            other.close()


async def test_calls_serve_routes_share_the_limit_with_direct_calls(directory: str) -> None:
    """A call Serve routed (``admit``) waits while direct calls fill the replica, and a direct call
    is refused while Serve's calls fill it; each runs as soon as a slot frees."""
    async with replicas(directory, "r1", server={"limit": lambda: 1}) as c:
        pool, server, replica = c.pool, c.servers["r1"], c.replicas["r1"]
        held = pool.call(header("hold"), (1,), {})
        await settle()
        routed = asyncio.ensure_future(server.admit())
        await settle()
        assert not routed.done()  # the replica is full of direct calls
        replica.release.set()
        await held
        await asyncio.wait_for(routed, 2)  # the freed slot went to it
        replica.release.clear()
        direct = pool.call(header("echo"), (2,), {})
        await settle()
        assert pool.refusals == 1 and not direct.future.done()
        server.release()  # the routed call finished
        assert await asyncio.wait_for(direct, 2) == ("r1", 2)
        assert server.ongoing == 0


async def test_a_raised_replica_limit_applies_to_the_next_call(directory: str) -> None:
    limit = [1]
    async with replicas(directory, "r1", server={"limit": lambda: limit[0]}) as c:
        held = c.pool.call(header("hold"), (1,), {})
        await settle()
        limit[0] = 2  # Serve's max_ongoing_requests changed in place (app.update)
        assert await asyncio.wait_for(c.pool.call(header("echo"), (2,), {}), 2) == ("r1", 2)
        assert c.pool.refusals == 0
        c.replicas["r1"].release.set()
        await held


# -- frame limits -------------------------------------------------------------------------------------


async def test_arguments_or_results_over_the_frame_limit_fail_their_call_naming_the_node(directory: str) -> None:
    frames = FrameLimits(max_bytes=4096)
    async with replicas(directory, "r1", server={"limits": frames}, frames=frames) as c:
        pool, replica = c.pool, c.replicas["r1"]
        with pytest.raises(NodeError, match=r"Node 'Step': the arguments of a call pickled to \d+ bytes, over .* 4096 bytes") as err:
            await pool.call(header("echo"), (b"x" * 5000,), {})
        assert err.value.node == "Step" and err.value.error_type == "FrameTooLarge"
        assert replica.started == []  # never sent
        with pytest.raises(NodeError, match=r"the result of a call pickled to \d+ bytes.*DAGSERVE_DIRECT_MAX_FRAME_BYTES") as err:
            await pool.call(header("blob"), (5000,), {})
        assert err.value.node == "Step" and err.value.error_type == "FrameTooLarge"
        assert await pool.call(header("blob"), (100,), {}) == b"x" * 100  # the connection is fine
        assert pool.usable


async def test_a_replica_drops_a_caller_that_announces_too_large_a_frame_or_stalls_mid_frame(directory: str) -> None:
    server, replica = await serve(directory, "r1", limits=FrameLimits(max_bytes=4096, timeout_s=0.2))
    try:
        reader, writer = await asyncio.open_unix_connection(server.path)
        writer.write(FRAME_LENGTH.pack(10**12))  # nothing is buffered toward it: closed at once
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        reader, writer = await asyncio.open_unix_connection(server.path)
        frame = dumps((CALL, 1, dumps((header("echo"), (1,), {}))))
        writer.write(FRAME_LENGTH.pack(len(frame)) + frame[:10])  # then nothing more
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the 0.2 s deadline
        writer.close()
        assert replica.started == [] and server._conns == set()
        # Each refusal is counted by reason, and the replica reports them with its stats.
        assert server.transport_refusals == {"frame_too_large": 1, "frame_stalled": 1}
        assert server.stats()["refusals"] == {"frame_too_large": 1, "frame_stalled": 1}
    finally:
        server.close()


async def test_a_replica_that_stalls_mid_answer_fails_the_call_instead_of_hanging(directory: str) -> None:
    path = os.path.join(directory, "stuck.sock")

    async def stuck(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        writer.write(FRAME_LENGTH.pack(1000) + b"abc")  # a third of an answer, then silence
        await asyncio.sleep(30)

    stub = await asyncio.start_unix_server(stuck, path)
    pool = await connected(directory, 1, frames=FrameLimits(timeout_s=0.2))
    try:
        with pytest.raises(ReplicaLost, match="stalled"):
            await asyncio.wait_for(pool.call(header("echo"), (1,), {}), 5)
    finally:
        pool.close()
        stub.close()


async def test_frames_that_keep_coming_are_never_cut_by_the_deadline(directory: str) -> None:
    """The deadline is per frame, from its first byte: a stream of calls whose reads always end
    inside some frame is progress, not a stall."""
    frames = FrameLimits(timeout_s=0.3)
    async with replicas(directory, "r1", server={"limits": frames}, frames=frames) as c:
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.0
        while loop.time() < end:  # many overlapping calls of 64 KiB each way
            results = await asyncio.gather(*(c.pool.call(header("blob"), (65536,), {}) for _ in range(8)))
            assert all(len(r) == 65536 for r in results)
        assert c.pool.usable


# -- peers of another user -----------------------------------------------------------------------------

other_user = pytest.mark.skipif(not needs_root, reason="making a process of another user needs root")


@other_user
async def test_the_ingress_never_reads_from_a_socket_of_another_user(directory: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran-their-code"
    with foreign_socket(os.path.join(directory, "planted.sock"), marker):
        server, _ = await serve(directory, "r1")
        try:
            pool = await connected(directory, 1)
            try:
                await settle()
                assert list(pool._conns) == ["r1"] and pool._foreign == {"planted"}
                assert [(await pool.call(header("echo"), (i,), {}))[0] for i in range(4)] == ["r1"] * 4
                await pool.scan()  # not tried again
                stats = await asyncio.get_running_loop().run_in_executor(None, replica_stats, directory)
                assert [s["batches"] for s in stats] == [{4: 4}]  # the planted socket's answer was not read either
            finally:
                pool.close()
        finally:
            server.close()
    assert not marker.exists()


@other_user
async def test_a_replica_never_reads_from_a_caller_of_another_user(tmp_path: Path) -> None:
    import tempfile

    reachable = tempfile.mkdtemp(prefix="dagserve-open-")  # a directory others may enter: misconfigured
    os.chmod(reachable, 0o755)
    marker = tmp_path / "ran-their-code"
    try:
        server, replica = await serve(reachable, "r1")
        os.chmod(server.path, 0o666)
        try:
            with foreign_peer("connect", server.path, marker):
                await settle()
                assert server._conns == set()
            assert not marker.exists() and replica.started == []
        finally:
            server.close()
    finally:
        os.rmdir(reachable)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
async def test_an_abandoned_pool_hangs_up_whatever_its_loop(directory: str, loop_kind: str) -> None:
    """``abandon`` runs once the pool's loop no longer runs (an App's server stopped): the replica
    must see its caller go. uvloop's transport sockets have no ``shutdown()``."""
    import uvloop

    server, _ = await serve(directory, "r1")

    def use_then_leave() -> asyncio.AbstractEventLoop:
        loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()

        async def use() -> DirectPool:
            pool = await connected(directory, 1)
            assert await pool.call(header("echo"), (1,), {}) == ("r1", 1)
            pool._scanner.cancel()
            return pool

        pool = loop.run_until_complete(use())
        pool.abandon()  # the loop is stopped now
        return loop

    try:
        loop = await asyncio.to_thread(use_then_leave)
        for _ in range(100):
            if not server._conns:
                break
            await asyncio.sleep(0.02)
        assert not server._conns
        loop.close()
    finally:
        server.close()


async def test_models_notices_route_a_multiplexed_nodes_calls_to_holders(directory: str) -> None:
    """A replica's MODELS notice (backends/ray/replica_models.py) tells each caller the model ids it
    holds, now and on connecting; a call for a model goes to its holder, a model nobody holds to
    the replica holding the fewest, which counts as holding it at once."""
    async with replicas(directory, "r0", "r1") as c:
        report = {"ids": ["m"], "held": ["m"], "loads": 1}
        c.servers["r1"].announce_models(report)
        await settle()
        conns = {conn.replica: conn for conn in c.pool._conns.values()}
        assert (conns["r1"].models, conns["r0"].models) == ({"m"}, frozenset())
        for i in range(6):
            assert await c.pool.call(header("echo"), (i,), {}, model="m") == ("r1", i)
        assert await c.pool.call(header("echo"), (9,), {}, model="n") == ("r0", 9)
        assert conns["r0"].models == {"n"}
        assert c.pool.model_reports() == {"r0": None, "r1": report}
        late = await connected(directory, 2)  # a caller connecting later gets the last notice
        try:
            await settle()
            assert {conn.replica: set(conn.models) for conn in late._conns.values()} == {"r0": set(), "r1": {"m"}}
        finally:
            late.close()
