"""``make docs-images``: screenshots of the real dashboard for the docs (docs/img/dashboard.png,
docs/img/dashboard-phone.png).

It serves the README's graph (examples/quickstart.py) on the local backend on 127.0.0.1, sends it
traffic that rises and falls for about two minutes (a few bad payloads among it), scales the
Sentiment model from 2 to 3 replicas halfway, and photographs the page in headless Chromium
(tests/browser.py: the system's Chromium through Playwright), offline but for 127.0.0.1.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

import dagserve  # noqa: E402
from dagserve.http.settings import IngressConfig  # noqa: E402
from dagserve.http.ingress import create_app  # noqa: E402
from examples.quickstart import graph  # noqa: E402
from tests.background_server import BackgroundServer  # noqa: E402
from tests.browser import Offline, chromium, missing_reason  # noqa: E402

RUN_S = 120.0
TEXTS = ["What a GREAT film", "boring and awful", "I love it", "stupid plot, great cast", "ok"]


def traffic(url: str, stop: threading.Event, app: dagserve.App) -> None:
    start = time.monotonic()
    scaled = False
    with httpx.Client(base_url=url, timeout=30, headers={"user-agent": "docs-images"}) as client:
        i = 0
        while not stop.is_set():
            elapsed = time.monotonic() - start
            rate = 12 + 10 * math.sin(elapsed / 14)  # requests per second, rising and falling
            if i % 37 == 0:
                client.post("/", json={"lang": "en"})  # a bad payload: a client error (422)
            else:
                client.post("/", json={"text": TEXTS[i % len(TEXTS)], "lang": "fr" if i % 5 == 0 else "en"})
            if not scaled and elapsed > RUN_S / 2:
                threading.Thread(target=app.scale, args=("Sentiment",), kwargs={"num_replicas": 3}, daemon=True).start()
                scaled = True
            i += 1
            stop.wait(1 / rate)


def main() -> int:
    reason = missing_reason()
    if reason is not None:
        print(f"make docs-images needs Chromium and Playwright: {reason}", file=sys.stderr)
        return 1
    out = ROOT / "docs" / "img"
    app = dagserve.deploy(graph, backend="local")
    stop = threading.Event()
    try:
        web = create_app({app.name: app}, IngressConfig(local_dashboard=True, admin_token="docs", allowed_hosts=()))
        with BackgroundServer(web) as url:
            sender = threading.Thread(target=traffic, args=(url, stop, app), daemon=True)
            sender.start()
            print(f"sending traffic to {url} for {RUN_S:g} s...", file=sys.stderr)
            time.sleep(RUN_S)
            with chromium() as browser:
                shots = [("dashboard.png", {"width": 1440, "height": 940}, "Sentiment"), ("dashboard-phone.png", {"width": 390, "height": 844}, None)]
                for name, viewport, node in shots:
                    context = browser.new_context(viewport=viewport, device_scale_factor=2 if viewport["width"] < 500 else 1)
                    offline = Offline(context)
                    page = context.new_page()
                    page.goto(url + "-/dashboard")
                    page.wait_for_selector('#diagram [data-node="Sentiment"]', timeout=60_000)
                    page.wait_for_function("() => document.querySelectorAll('#chart-replicas path.series').length > 0", timeout=60_000)
                    if node:
                        page.click(f'#diagram [data-node="{node}"]')
                        page.wait_for_selector("#panel-title", timeout=60_000)
                    page.wait_for_timeout(2500)  # one more poll, so the numbers are the latest
                    page.screenshot(path=str(out / name), full_page=viewport["width"] >= 500)
                    context.close()
                    if offline.foreign:
                        print(f"the page asked for other hosts: {offline.foreign}", file=sys.stderr)
                        return 1
                    print(f"wrote {out / name}", file=sys.stderr)
            stop.set()
            sender.join(60)
    finally:
        stop.set()
        app.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
