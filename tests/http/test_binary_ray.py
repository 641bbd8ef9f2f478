"""Files in and bytes out over real uvicorn with the graphs on a real local Ray: the checks of
test_binary_http.py (tests/binary_checks.py), with every node in its own Serve replica, so that
Files and bytes cross processes both ways."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import dagserve
from examples.digits_png import graph as digits_png
from tests import binary_checks as checks
from tests import binary_graphs as bg
from tests.background_server import BackgroundServer

pytestmark = [pytest.mark.ray, pytest.mark.http]


@pytest.fixture(scope="module")
def apps(shared_ray: None) -> Iterator[dict[str, dagserve.App]]:
    deployed: dict[str, dagserve.App] = {}
    try:
        for g in (bg.upload(), bg.blob(), bg.file_out(), digits_png):
            deployed[g.name] = dagserve.deploy(g, backend="ray", ready_timeout_s=180)
        yield deployed
    finally:
        for app in deployed.values():
            app.shutdown()


@pytest.fixture(scope="module")
def url(apps: dict[str, dagserve.App]) -> Iterator[str]:
    with BackgroundServer(dagserve.asgi_app(list(apps.values()))) as base:
        yield base


def test_multipart_raw_and_base64_bodies_reach_ray_replicas(url: str) -> None:
    checks.check_multipart(url)
    checks.check_raw(url)
    checks.check_base64(url)


def test_file_and_png_answers_come_back_from_ray_replicas(url: str) -> None:
    checks.check_file_answer(url)
    checks.check_png_answer(url)


def test_app_call_returns_the_file_a_replica_made(apps: dict[str, dagserve.App]) -> None:
    f = apps["file_out"].call({"data": b"ab", "repeat": 2})
    assert f == dagserve.File(b"abab", filename="échelle 1.png", content_type="image/png")
    assert apps["blob"].call({"data": b"\x00", "repeat": 3}) == b"\x00\x00\x00"
    assert apps["upload"].call({"image": dagserve.File(b"x", filename="a")})["filename"] == "a"
