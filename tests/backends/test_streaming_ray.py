"""Streaming on the Ray backend (conftest.py's shared Ray): a sync generator in its replica read by
an async generator in another (the stream goes replica to replica, through Serve's streaming
handle until the reading replica's direct pool has connected, then over the direct transport;
the last one to the ingress over the direct transport), and a generator read by the ingress
alone, from Python and over real HTTP; the same checks as the local backend's
(tests/stream_checks.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import dagserve
from dagserve.backends.ray.direct.frames import STREAM_WINDOW

from .. import stream_checks as sc
from .. import stream_graphs as sg
from ..background_server import BackgroundServer

pytestmark = [pytest.mark.ray, pytest.mark.http]


@pytest.fixture(scope="module")
def served(shared_ray: None) -> Iterator[tuple[dagserve.App, str]]:
    with dagserve.deploy(sg.mixed, backend="ray", ready_timeout_s=180, request_timeout_s=3) as app:
        with BackgroundServer(app.asgi()) as url:
            yield app, url


@pytest.fixture(scope="module")
def single(shared_ray: None) -> Iterator[tuple[dagserve.App, str]]:
    """prepare -> produce_sync: the generator's stream goes straight to the ingress."""
    with dagserve.deploy(sg.sync_chain, backend="ray", ready_timeout_s=180) as app:
        with BackgroundServer(app.asgi()) as url:
            yield app, url


def test_python(served: tuple[dagserve.App, str], tmp_path: Any) -> None:
    app, _ = served
    sc.check_order(app)
    sc.check_error_mid_stream(app)
    sc.check_close_stops(app, str(tmp_path / "close.log"))


def test_python_deadlines(served: tuple[dagserve.App, str]) -> None:
    app, _ = served
    sc.check_first_item_deadline(app)
    sc.check_stream_timeout(app)


def test_http(served: tuple[dagserve.App, str], tmp_path: Any) -> None:
    _, url = served
    sc.check_http_formats(url)
    sc.check_http_error_mid_stream(url)
    sc.check_http_disconnect(url, str(tmp_path / "hangup.log"))
    sc.check_http_first_item_deadline(url)


def test_slow_reader_holds_the_generator_within_the_direct_window(single: tuple[dagserve.App, str], tmp_path: Any) -> None:
    app, url = single
    assert list(app.stream({"n": 3})) == [0, 1, 2]
    assert app.backend.transport("produce_sync") == "direct"  # the stream took the direct transport
    # The replica sends at most STREAM_WINDOW items ahead of what the ingress read (+1 in hand).
    sc.check_slow_reader(app, str(tmp_path / "python.log"), ahead=STREAM_WINDOW + 1)
    sc.check_http_slow_reader(url, str(tmp_path / "http.log"))


def test_a_stream_read_replica_to_replica_goes_direct_and_a_slow_reader_holds_it_two_hops_away(
    served: tuple[dagserve.App, str], tmp_path: Any
) -> None:
    import asyncio
    import time

    from ray.serve.handle import DeploymentHandle

    app, _ = served

    async def relay_info() -> dict[str, Any]:
        relay = DeploymentHandle("relay", app.backend._app_name)  # its router on this loop
        return await relay.dagserve_replica_info.remote()  # type: ignore[no-any-return]

    peers: dict[str, Any] = {}
    for _ in range(60):  # the first streams open the pools, which connect in the background
        assert list(app.stream({"n": 3})) == [0, 1, 2]
        info = asyncio.run(relay_info())
        assert info["gc_frozen"] > 10_000  # its start-up heap (Ray, Serve) is out of GC scans (runtime/heap.py)
        peers = info["direct_peers"]
        if peers and app.backend.transport("relay") == "direct":  # and the ingress's pool
            break
        time.sleep(0.5)
    assert peers == {"produce_sync": {"local socket": 1}}
    # Each hop holds its generator within the window (+1 in hand): through Serve (no flow
    # control) produce_sync would run to its 200th item.
    sc.check_slow_reader(app, str(tmp_path / "python.log"), ahead=2 * (STREAM_WINDOW + 1))
