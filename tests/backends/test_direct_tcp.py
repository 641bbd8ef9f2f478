"""The direct transport across Ray nodes on its own: the token handshake and TCP on 127.0.0.1, no Ray.

The Ray side (replicas on another raylet reached over TCP, Ray's token, the KV listing) is in
tests/backends/test_cross_node.py.
"""

from __future__ import annotations

import asyncio
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from dagserve.backends.ray.direct.auth import HELLO_BYTES, PROOF_BYTES, AuthFailed, Handshake, derive_key
from dagserve.backends.ray.direct.pool import DirectPool
from dagserve.backends.ray.direct.frames import CALL, FRAME_LENGTH, FrameLimits, dumps
from dagserve.backends.ray.direct.replica_server import ReplicaServer

from .test_direct import Replica, header, serve, settle

KEY = derive_key("Bearer the-cluster-token")


def exchange(client: Handshake, server: Handshake) -> tuple[bytes, bytes]:
    """Run the handshake between two ends in memory; what each sent after the hello."""
    to_server, _ = client.feed(server.hello)  # the client's proof
    sent_by_client = to_server
    to_client, _ = server.feed(client.hello + to_server)
    client.feed(to_client)
    return sent_by_client, to_client


def test_both_ends_prove_the_token_and_only_then_frames_flow() -> None:
    client, server = Handshake(KEY, client=True), Handshake(KEY, client=False)
    proof, answer = exchange(client, server)
    assert client.done and server.done
    assert len(proof) == len(answer) == PROOF_BYTES and proof != answer  # role-bound proofs
    assert len(client.hello) == HELLO_BYTES and client.hello != server.hello  # fresh nonces
    # Bytes after the proof are frames, handed back untouched.
    s2 = Handshake(KEY, client=False)
    c2 = Handshake(KEY, client=True)
    p2, _ = c2.feed(s2.hello)
    reply, rest = s2.feed(c2.hello + p2 + b"frame")
    assert s2.done and rest == b"frame" and len(reply) == PROOF_BYTES


def test_a_wrong_token_or_protocol_fails_and_the_replica_proves_nothing_to_it() -> None:
    client, server = Handshake(derive_key("Bearer wrong"), client=True), Handshake(KEY, client=False)
    proof, _ = client.feed(server.hello)
    reply, _ = server.feed(client.hello)
    assert reply == b""  # nothing from the replica until the caller proved itself
    with pytest.raises(AuthFailed, match="proof"):
        server.feed(proof)
    assert not server.done
    with pytest.raises(AuthFailed, match="does not speak"):
        Handshake(KEY, client=False).feed(b"GET / HTTP/1.1\r\n")
    # A replayed proof from another exchange fails: the nonces differ.
    c1, s1 = Handshake(KEY, client=True), Handshake(KEY, client=False)
    old_proof, _ = exchange(c1, s1)
    s3 = Handshake(KEY, client=False)
    with pytest.raises(AuthFailed):
        s3.feed(c1.hello + old_proof)
    # A client never accepts a replica that answers with the caller's own kind of proof.
    c4, s4 = Handshake(KEY, client=True), Handshake(KEY, client=False)
    own, _ = c4.feed(s4.hello)
    with pytest.raises(AuthFailed):
        c4.feed(own)


def test_the_listener_needs_a_token_and_the_nodes_address() -> None:
    with pytest.raises(ValueError, match="token"):
        ReplicaServer("/nonexistent.sock", Replica("r").dispatch, dict, tcp_host="127.0.0.1", auth_key=None)
    with pytest.raises(ValueError, match="never every interface"):
        ReplicaServer("/nonexistent.sock", Replica("r").dispatch, dict, tcp_host="0.0.0.0", auth_key=KEY)


async def tcp_pool(directory: str, address: tuple[str, int], key: bytes) -> DirectPool:
    async def remote() -> dict[str, tuple[str, int]]:
        return {"far": address}

    return DirectPool(directory, max_ongoing=10, max_queued=None, loop=asyncio.get_running_loop(),
                      remote=remote, auth_key=key)


async def test_calls_cross_over_tcp_after_the_handshake_and_prefer_the_local_replica(directory: str) -> None:
    far_dir = os.path.join(directory, "far")
    os.mkdir(far_dir, 0o700)
    far, far_replica = await serve(far_dir, "far", tcp_host="127.0.0.1", auth_key=KEY)
    assert far.tcp_address is not None and far.tcp_address[0] == "127.0.0.1"
    pool = await tcp_pool(directory, far.tcp_address, KEY)
    try:
        await pool.scan()
        assert pool.transports() == {"cross-node": 1}
        assert await pool.call(header("echo"), (1,), {}) == ("far", 1)
        # A replica on the caller's node appears: it takes the calls while it has room.
        near, near_replica = await serve(directory, "near", limit=lambda: 1)
        await pool.scan()
        assert pool.transports() == {"cross-node": 1, "local socket": 1}
        for i in range(4):
            assert (await pool.call(header("echo"), (i,), {}))[0] == "near"
        # Full (one call held), the next call goes to the far replica.
        held = pool.call(header("hold"), (9,), {})
        await settle()
        assert await pool.call(header("echo"), (5,), {}) == ("far", 5)
        near_replica.release.set()
        assert await held == ("near", 9)
        near.close()
    finally:
        pool.close()
        far.close()
    assert far_replica.started[0] == (1,)


async def test_a_caller_with_the_wrong_token_is_refused_and_nothing_is_unpickled(directory: str, tmp_path: Path) -> None:
    far, far_replica = await serve(directory, "far", tcp_host="127.0.0.1", auth_key=KEY)
    assert far.tcp_address is not None
    pool = await tcp_pool(str(tmp_path), far.tcp_address, derive_key("Bearer wrong"))
    try:
        await pool.scan()
        assert not pool.usable and pool.transports() == {}
        assert "far" in pool._foreign  # not tried again
        await settle()
        assert far.transport_refusals["bad_handshake"] == 1  # counted where it was refused
    finally:
        pool.close()
    # A client that skips the handshake and sends a pickle straight away: it is never loaded.
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(_Evil(str(marker)))
    frame = dumps((CALL, 1, evil))
    reader, writer = await asyncio.open_connection(*far.tcp_address)
    writer.write(FRAME_LENGTH.pack(len(frame)) + frame)
    await writer.drain()
    hello = await asyncio.wait_for(reader.readexactly(HELLO_BYTES), 5)
    assert hello.startswith(b"DGSAUTH1")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing else sent
    writer.close()
    await settle()
    assert not marker.exists() and far_replica.started == [] and not far._conns
    assert far.transport_refusals["bad_handshake"] == 2 and far.stats()["refusals"]["bad_handshake"] == 2
    far.close()


def _touch(path: str) -> None:
    Path(path).write_text("loaded")


class _Evil:
    """Unpickling it writes a file: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (_touch, (self.path,))


def test_without_the_clusters_token_auth_a_replica_never_listens_across_nodes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dagserve.backends.ray import direct_routing

    monkeypatch.setattr(direct_routing, "ray_token_key", lambda: None)
    with caplog.at_level("WARNING", logger="dagserve.ray"):
        assert direct_routing.cross_node_listener("Model") == (None, None)
    assert "token authentication" in caplog.text and "'Model'" in caplog.text


async def test_an_address_that_never_answers_is_forgotten_after_two_scans(directory: str) -> None:
    # What a node that is gone looks like from a caller: its replicas' addresses stay listed in
    # Ray's KV store, and connecting to them hangs (here: a listener that never says hello).
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    address = silent.sockets[0].getsockname()[:2]
    forgotten: list[str] = []

    async def remote() -> dict[str, tuple[str, int]]:
        return {} if forgotten else {"gone": address}

    pool = DirectPool(directory, max_ongoing=10, max_queued=None, loop=asyncio.get_running_loop(),
                      limits=FrameLimits(timeout_s=0.2), remote=remote, auth_key=KEY, on_stale=forgotten.append)
    try:
        await pool.scan()  # the handshake times out once: maybe a slow node
        assert forgotten == [] and pool.transports() == {}
        await pool.scan()  # and again: the address is stale
        assert forgotten == ["gone"]
        await pool.scan()  # no longer listed: no more connect timeouts
        assert forgotten == ["gone"] and pool.transports() == {}
    finally:
        pool.close()
        silent.close()
