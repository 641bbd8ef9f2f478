"""The direct transport across Ray nodes, on a real two-raylet cluster on this machine (loopback).

One ``ray.cluster_utils.Cluster`` with token authentication for the whole module: a head (custom
resource ``first``) and a second raylet (``second``); both offer ``spread``, so a node asking for
it gets one replica on each. This process (the caller) runs on the head. The second raylet is
another machine to Ray although it shares this host: calls to its replicas must go over TCP
after the token handshake, never through a Unix socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dagserve
from dagserve.backends.ray import direct_routing
from dagserve.backends.ray.cluster import _START_FLAKES, _loopback_only
from dagserve.backends.ray.direct import registry
from dagserve.backends.ray.direct.auth import HELLO_BYTES, Handshake, derive_key
from dagserve.backends.ray.direct.directory import socket_dir
from dagserve.backends.ray.direct.frames import CALL, FRAME_LENGTH

pytestmark = pytest.mark.ray


@dagserve.node(resources={"first": 0.1})
def pre(x: int) -> int:
    return x + 1


@dagserve.node(resources={"second": 0.1}, max_batch_size=4, batch_wait_timeout_s=0.001)
class Far:
    def __call__(self, xs: list[int]) -> list[int]:
        return [x * 10 for x in xs]


@dagserve.node(num_replicas=2, resources={"spread": 1})
def where(x: int) -> int:
    return os.getpid()


def graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = {"value": Far()(pre(inp)), "pid": where(inp)}
    return dagserve.Graph(out, name="xnode")


@pytest.fixture(scope="module")
def app() -> Iterator[dagserve.App]:
    import ray
    from ray import cluster_utils
    from ray._raylet import AuthenticationTokenLoader, Config

    assert not ray.is_initialized(), "this module connects to its own cluster"
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ["RAY_AUTH_MODE"] = "token"
    # The token this user's Rays already use when there is one (a Ray started earlier in this
    # process read it, and parts of Ray keep what they read), else a new one.
    token_file = Path.home() / ".ray" / "auth_token"
    existing = token_file.read_text().strip() if token_file.is_file() else ""
    os.environ["RAY_AUTH_TOKEN"] = existing or secrets.token_hex(16)
    Config.initialize("")  # this process reads the mode from a cached config
    # ... and its token from a cache an earlier Ray in this process may have filled (another token).
    AuthenticationTokenLoader.instance().reset_cache()
    original_write = ray._private.utils.write_ray_address
    ray._private.utils.write_ray_address = lambda *a, **k: None  # keep other processes' ray.init() away
    c = None
    try:
        for attempt in (1, 2):  # a head node may time out starting on a loaded machine: once more
            try:
                with _loopback_only():
                    c = cluster_utils.Cluster(
                        initialize_head=True,
                        head_node_args={"num_cpus": 1, "include_dashboard": False, "resources": {"first": 1, "spread": 1}},
                    )
                    c.add_node(num_cpus=1, resources={"second": 1, "spread": 1})
                break
            except Exception as exc:  # Ray's start-up flakes: a RuntimeError, or a plain Exception
                if c is not None:
                    c.shutdown()
                    c = None
                flake = isinstance(exc, RuntimeError) or any(sign in str(exc) for sign in _START_FLAKES)
                if attempt == 2 or not flake:
                    raise
                logging.getLogger(__name__).warning("cluster start failed (%s); once more", exc)
        ray._private.utils.write_ray_address = original_write
        with dagserve.deploy(graph(), backend="ray", address=c.address, ready_timeout_s=180) as a:
            wait_for(a, lambda s: s["Far"].transport == "cross-node" and s["where"].transport == "mixed")
            yield a
    finally:
        ray._private.utils.write_ray_address = original_write
        if ray.is_initialized():
            ray.shutdown()
        if c is not None:
            c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def wait_for(app: dagserve.App, ready: Any, limit_s: float = 60.0) -> None:
    """Call until the transports are connected (the pools connect in the background)."""
    deadline = time.monotonic() + limit_s
    while True:
        app.call(1)
        nodes = app.status().nodes
        if ready(nodes):
            return
        assert time.monotonic() < deadline, {n: (s.transport, s.transport_replicas) for n, s in nodes.items()}
        time.sleep(0.2)


def test_calls_to_another_raylet_go_over_tcp_and_those_on_this_one_over_its_sockets(app: dagserve.App) -> None:
    import ray

    backend: Any = app.backend
    me = ray.get_runtime_context().get_node_id()
    assert {r["node_id"] for r in backend.replicas("Far")} == {n for n in _node_ids() if n != me}
    assert app.call(1)["value"] == 20
    nodes = app.status().nodes
    assert (nodes["pre"].transport, nodes["pre"].transport_replicas) == ("local socket", {"local socket": 1})
    assert (nodes["Far"].transport, nodes["Far"].transport_replicas) == ("cross-node", {"cross-node": 1})
    assert nodes["where"].transport_replicas == {"local socket": 1, "cross-node": 1}
    # Never the Unix socket: the far replica's socket is in its own raylet's directory, not ours.
    cluster = ray.get_runtime_context().gcs_address
    mine = socket_dir(cluster, "xnode", "Far", me)
    assert mine is not None and not os.listdir(mine)
    pool = backend._direct.pools["Far"]
    assert [c.cross_node for c in pool._conns.values()] == [True]
    # It listens on its node's Ray address (loopback here), announced in Ray's KV store.
    [entry] = registry.listing("xnode", "Far")
    assert entry.host == "127.0.0.1" and entry.node_id != me
    # Locality: one call at a time, the replica on this node has room: it takes every call.
    before = _calls(backend._direct.replica_stats("Far", backend._loop))
    pids = {app.call(i)["pid"] for i in range(20)}
    local = [r for r in backend.replicas("where") if r["node_id"] == me]
    assert pids == {local[0]["pid"]}
    # The far replica's batch counts come back over the same authenticated connection (STATS),
    # so batch_sizes() sees the batches of calls that never went through Serve.
    assert _calls(backend._direct.replica_stats("Far", backend._loop)) - before == 20
    assert sum(size * n for size, n in backend.batch_sizes()["Far"].items()) >= 21


def _calls(stats: list[Any] | None) -> int:
    """Calls in the batches of these replica stats (batch size -> batches)."""
    assert stats is not None
    return sum(int(size) * n for found in stats for size, n in found["batches"].items())


def test_a_client_without_the_token_is_refused_before_any_pickle_is_read(app: dagserve.App, tmp_path: Path) -> None:
    [entry] = registry.listing("xnode", "Far")
    marker = tmp_path / "unpickled"
    evil = _pickle_that_makes(str(marker))

    async def attempt(handshake: Handshake | None) -> bytes:
        reader, writer = await asyncio.open_connection(entry.host, entry.port)
        try:
            hello = await asyncio.wait_for(reader.readexactly(HELLO_BYTES), 10)
            if handshake is not None:
                proof, _ = handshake.feed(hello)
                writer.write(handshake.hello + proof)
            try:
                writer.write(FRAME_LENGTH.pack(len(evil)) + evil)
                await writer.drain()
                return await asyncio.wait_for(reader.read(), 10)  # b"": closed with nothing sent
            except ConnectionResetError:
                return b""  # closed at once (aborted)
        finally:
            writer.close()

    assert asyncio.run(attempt(None)) == b""
    assert asyncio.run(attempt(Handshake(derive_key("Bearer not-the-token"), client=True))) == b""
    time.sleep(0.5)
    assert not marker.exists()
    assert app.call(2)["value"] == 30  # the replica serves on
    # Both refusals are counted by the far replica and scraped from it into Prometheus.
    from prometheus_client.parser import text_string_to_metric_families

    from dagserve.observe.metrics import Metrics

    metrics = Metrics()
    metrics.instrument(app)
    samples = {
        (s.labels["node"], s.labels["side"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
        if s.name == "dagserve_direct_transport_refusals_total"
    }
    assert samples.get(("Far", "replica", "bad_handshake"), 0) >= 2, samples


def test_without_cluster_token_auth_calls_to_other_nodes_go_through_serve(
    app: dagserve.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = app.backend._direct  # type: ignore[attr-defined]

    def transports() -> set[str | None]:
        nodes = app.status().nodes
        return {nodes[n].transport for n in ("pre", "Far", "where")}

    monkeypatch.setattr(direct_routing, "ray_token_key", lambda: None)
    try:
        # Checked here (a background re-check started before the patch may finish after it: check again).
        for _ in range(20):
            routing.check()
            if transports() == {"serve"}:
                break
        assert transports() == {"serve"}
        assert "token authentication" in (app.status().nodes["Far"].transport_note or "")
        assert app.call(1)["value"] == 20
    finally:
        monkeypatch.undo()
    for _ in range(20):
        routing.check()
        if app.status().nodes["Far"].transport == "cross-node":
            break
        time.sleep(0.2)
    assert app.status().nodes["Far"].transport == "cross-node"


def _node_ids() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def _pickle_that_makes(path: str) -> bytes:
    """A frame envelope whose loading creates ``path`` (so an unpickled frame leaves a trace)."""
    import pickle

    class Make:
        def __reduce__(self) -> Any:
            return (os.mkdir, (path,))

    return pickle.dumps((CALL, 1, Make()))
