"""The dashboard and /docs in a real headless Chromium, against real servers on 127.0.0.1, with
every request to another host failed and recorded (the pages must load with the network off).

Waits are bounded conditions on the page (the page polls every 2 s), never durations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import dagserve
from dagserve.http.settings import IngressConfig
from dagserve.http.ingress import create_app
from examples.quickstart import graph as reviews
from tests.background_server import BackgroundServer
from tests.browser import Offline, browser_tests_skip_reason, chromium
from tests.example_graphs import chain

ADMIN = "dash-admin-token"
WAIT_MS = 90_000  # generous: a loaded 2-core CI; the conditions usually hold within a poll or two

_skip = browser_tests_skip_reason()
pytestmark = [pytest.mark.http, pytest.mark.timeout(300)]
if _skip is not None:
    pytestmark.append(pytest.mark.skip(reason=_skip))


class Tab:
    """A page in a fresh browser context, offline but for 127.0.0.1, collecting the page's errors."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.offline = Offline(self.context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

    def wait(self, script: str, arg: Any = None) -> None:
        self.page.wait_for_function(script, arg=arg, timeout=WAIT_MS)

    def wait_text(self, selector: str, pattern: str) -> None:
        """Until the element ``selector`` exists and its text matches the regular expression ``pattern``."""
        self.wait(
            "([sel, re]) => { const e = document.querySelector(sel); return e !== null && new RegExp(re).test(e.textContent); }",
            [selector, pattern],
        )

    def text(self, selector: str) -> str:
        return self.page.text_content(selector, timeout=WAIT_MS) or ""

    def check_clean(self) -> None:
        """Nothing was fetched from another host; no script error, no CSP violation."""
        assert self.offline.foreign == []
        assert self.errors == []


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    t = Tab(browser)
    yield t
    t.context.close()


def serve_apps(*apps: dagserve.App) -> BackgroundServer:
    """The ingress as ``dagserve.serve`` builds it, with admin routes, on 127.0.0.1."""
    config = IngressConfig(local_dashboard=True, admin_token=ADMIN, allowed_hosts=())
    return BackgroundServer(create_app({a.name: a for a in apps}, config))


def card_line(node: str, line: str) -> str:
    return f'[data-node="{node}"] [data-line="{line}"]'


def check_every_node_appears(tab: Tab, url: str, graph: str | None = None) -> None:
    params = {"graph": graph} if graph else {}
    auth = {"authorization": f"Bearer {ADMIN}"}
    topology = httpx.get(url + "-/dashboard/data", params=params, headers=auth).json()["topology"]
    ids = sorted(n["id"] for n in topology["nodes"])
    tab.wait("n => document.querySelectorAll('#diagram [data-node]').length === n", len(ids))
    shown = tab.page.eval_on_selector_all("#diagram [data-node]", "els => els.map(e => e.dataset.node)")
    assert sorted(shown) == ids


def scale_from_the_page(tab: Tab, app: dagserve.App, node: str, replicas: int) -> None:
    page = tab.page
    page.fill("#admin-token", ADMIN)
    page.click("#unlock-form button")
    page.wait_for_selector("#admin-lock", timeout=WAIT_MS)
    page.click(f'#diagram [data-node="{node}"]')
    page.wait_for_selector("#scale-form", timeout=WAIT_MS)
    page.fill("#scale-replicas", str(replicas))
    page.click("#scale-button")
    tab.wait_text("#control-message", "^Scaled")
    assert app.status().nodes[node].target_replicas == replicas
    tab.wait_text(card_line(node, "replicas"), f"^replicas {replicas}/{replicas}")


def test_the_dashboard_shows_the_graph_live_and_scales_a_node(tab: Tab) -> None:
    app = dagserve.deploy(reviews, backend="local")
    try:
        with serve_apps(app) as url, httpx.Client(base_url=url) as client:
            tab.page.goto(url + "-/dashboard")
            check_every_node_appears(tab, url)
            # Counts are the process's metrics of graph "reviews" (another test may have run one before).
            requests = int(tab.text("#summary-requests b").replace(",", ""))
            calls = int(tab.text(card_line("clean", "calls")).split()[1].replace(",", ""))

            for i in range(30):
                r = client.post("/", json={"text": f"a great film {i}", "lang": "en" if i % 3 else "fr"})
                assert r.status_code == 200
            assert client.post("/", json={"lang": 3}).status_code == 422  # a client error, for the chart
            tab.wait_text("#summary-requests b", f"^{requests + 31:,}$")
            tab.wait_text(card_line("clean", "calls"), f"^calls {calls + 30:,} ")
            tab.wait_text(card_line("clean", "latency"), "^p50 [0-9]")
            tab.wait_text(card_line("Toxicity", "batch"), "^batch avg")
            tab.wait("() => document.querySelectorAll('#chart-requests path.series').length >= 1")
            tab.wait("() => document.querySelectorAll('#chart-latency path.series').length >= 1")

            # The node panel: options in force, no controls until the admin token is typed.
            tab.page.click('#diagram [data-node="Toxicity"]')
            tab.wait_text("#panel-title", "^Toxicity$")
            assert "batch 16, wait 5 ms" in tab.text("#panel-options")
            assert tab.page.query_selector("#scale-form") is None

            scale_from_the_page(tab, app, "Sentiment", 3)

            # An option update from the same panel (the admin route .../update).
            tab.page.fill("#update-max-ongoing-requests", "50")
            tab.page.click("#update-button")
            tab.wait_text("#control-message", "^Updated")
            assert app.status().nodes["Sentiment"].options["max_ongoing_requests"] == 50
            tab.wait_text("#panel-options", "max ongoing 50")
        tab.check_clean()
    finally:
        app.shutdown()


def test_errors_show_with_their_request_ids(tab: Tab) -> None:
    from tests.example_graphs import failing

    app = dagserve.deploy(failing(), backend="local")
    try:
        with serve_apps(app) as url, httpx.Client(base_url=url) as client:
            r = client.post("/", json=41, headers={"x-request-id": "trace-me-41"})
            assert r.status_code == 500
            tab.page.goto(url + "-/dashboard")
            tab.wait_text("#errors", "trace-me-41")
            assert "ValueError" in tab.text("#errors")
            assert "bad value" not in tab.text("body")  # the message carries the payload: never shown
            tab.page.click('#diagram [data-node="fail"]')
            tab.wait_text("#panel-errors", "trace-me-41")
        tab.check_clean()
    finally:
        app.shutdown()


def test_a_server_of_several_graphs_shows_each_and_their_features(tab: Tab) -> None:
    from dagserve.observe.history import FEATURES
    from tests.stream_graphs import chain as streamed

    def queue(app: dagserve.App, metrics: Any) -> dict[str, dict[str, Any]]:
        return {"Toxicity": {"depth": 7}, "": {"waiting": 2}} if app.name == "reviews" else {}

    FEATURES["queue"] = queue  # how a feature built beside the dashboard shows its figures
    apps = [dagserve.deploy(reviews, backend="local"), dagserve.deploy(streamed, backend="local")]
    try:
        with serve_apps(*apps) as url, httpx.Client(base_url=url) as client:
            tab.page.goto(url + "-/dashboard")
            tab.wait("() => document.querySelectorAll('.graph-tab').length === 2")
            check_every_node_appears(tab, url, "reviews")
            tab.wait_text(card_line("Toxicity", "feature:queue"), "^queue: depth 7$")
            tab.wait_text('[data-feature="queue:waiting"]', "^queue waiting2$")  # the graph's own figures

            r = client.post("/chain", json={"n": 3}, headers={"accept": "text/event-stream"})
            assert r.status_code == 200
            tab.page.click('.graph-tab[data-graph="chain"]')
            tab.wait("() => document.querySelector('#diagram [data-node=\"produce\"]') !== null")
            check_every_node_appears(tab, url, "chain")
            assert tab.page.url.endswith("?graph=chain")
            assert tab.page.get_attribute('.graph-tab[data-graph="chain"]', "aria-current") == "page"
            # Streams' figures (observe/stream_metrics.py) on the generator's card.
            tab.wait_text(card_line("produce", "feature:stream"), "^stream: .*items 3")
        tab.check_clean()
    finally:
        del FEATURES["queue"]
        for a in apps:
            a.shutdown()


def test_docs_and_dashboard_load_with_the_network_off(tab: Tab) -> None:
    app = dagserve.deploy(reviews, backend="local")
    try:
        with BackgroundServer(app.asgi(admin_token=ADMIN)) as url:
            tab.page.goto(url + "docs")
            tab.page.wait_for_selector(".opblock", timeout=WAIT_MS)  # Swagger UI rendered the operations
            assert "reviews" in (tab.page.text_content(".swagger-ui") or "")
            # Under app.asgi() the admin token opens the dashboard (then a cookie keeps it).
            tab.page.goto(url + f"-/dashboard?token={ADMIN}")
            assert tab.page.url == url + "-/dashboard"
            check_every_node_appears(tab, url)
        tab.check_clean()
    finally:
        app.shutdown()


def test_the_page_is_readable_on_a_phone(browser: Any) -> None:
    app = dagserve.deploy(reviews, backend="local")
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        with serve_apps(app) as url:
            page.goto(url + "-/dashboard")
            page.wait_for_selector('#diagram [data-node="clean"]', timeout=WAIT_MS)
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 390  # no sideways scrolling of the page (the diagram scrolls in its card)
            boxes = [page.eval_on_selector(sel, "e => e.getBoundingClientRect().width") for sel in ("#panel", ".chart-card")]
            assert all(390 >= w >= 300 for w in boxes), boxes  # one column, full width
    finally:
        context.close()
        app.shutdown()
