"""The dashboard of a graph on a real local Ray, in headless Chromium: every node appears, the
figures move with traffic, and a scale from the page changes the node's Serve replicas."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import dagserve
from tests.browser import browser_tests_skip_reason, chromium
from tests.example_graphs import chain
from tests.http.test_dashboard_browser import Tab, card_line, check_every_node_appears, scale_from_the_page, serve_apps

_skip = browser_tests_skip_reason()
pytestmark = [pytest.mark.ray, pytest.mark.http, pytest.mark.timeout(300)]
if _skip is not None:
    pytestmark.append(pytest.mark.skip(reason=_skip))


@pytest.fixture(scope="module")
def ray_app(shared_ray: None) -> Iterator[dagserve.App]:
    app = dagserve.deploy(chain(), backend="ray")
    try:
        yield app
    finally:
        app.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def test_the_dashboard_of_a_ray_graph_is_live_and_scales_a_node(ray_app: dagserve.App, browser: Any) -> None:
    tab = Tab(browser)
    try:
        with serve_apps(ray_app) as url, httpx.Client(base_url=url, timeout=60) as client:
            tab.page.goto(url + "-/dashboard")
            check_every_node_appears(tab, url)
            tab.wait_text("#summary-backend b", "^ray$")
            for i in range(10):
                assert client.post("/", json=i).status_code == 200
            tab.wait_text(card_line("Scale", "calls"), "^calls 10 ")
            tab.wait_text(card_line("Scale", "replicas"), "^replicas 1/1")
            scale_from_the_page(tab, ray_app, "Scale", 2)
            assert len(ray_app.status().nodes["Scale"].replica_ids) == 2
        tab.check_clean()
    finally:
        tab.context.close()
