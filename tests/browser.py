"""Headless Chromium for the tests of the ingress's pages (and ``make docs-images``): Playwright
for Python driving the system's Chromium (``scripts/setup.sh --test`` installs Debian's
``chromium``; Playwright downloads no browser here).

``offline(context)`` fails every request to a host other than 127.0.0.1 and records it, so a
test can assert that a page loaded with nothing from the network.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import urllib.parse
from collections.abc import Iterator
from typing import Any

__all__ = ["CHROMIUM_ARGS", "Offline", "browser_tests_skip_reason", "chromium", "chromium_path", "missing_reason"]

#: No sandbox as root (CI and this machine run as root), and nothing of Chromium's own traffic.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    """``$DAGSERVE_CHROMIUM``, else a ``chromium`` on the PATH."""
    given = os.environ.get("DAGSERVE_CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_reason() -> str | None:
    """Why the browser tests cannot run here (``None`` when they can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    given = os.environ.get("DAGSERVE_CHROMIUM")
    if given and chromium_path() is None:
        return f"DAGSERVE_CHROMIUM={given} is not an executable"
    if chromium_path() is None:
        return "no Chromium on this machine (scripts/setup.sh --test installs Debian's chromium)"
    return None


def browser_tests_skip_reason() -> str | None:
    """Why the browser tests skip here, or ``None`` when they run. On CI (``$CI`` set) they never
    skip: ``scripts/setup.sh --test`` installs Chromium there, so a missing one is a failure."""
    reason = missing_reason()
    if reason is None or os.environ.get("CI"):
        return None
    return f"browser tests need Chromium and Playwright: {reason}"


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``), closed on exit."""
    reason = missing_reason()
    if reason is not None:
        raise RuntimeError(f"Cannot start the browser: {reason}.")
    from playwright.sync_api import sync_playwright

    args = list(CHROMIUM_ARGS)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=args)
        try:
            yield browser
        finally:
            browser.close()


class Offline:
    """Fails a context's requests to any host but 127.0.0.1, and keeps their URLs in ``foreign``."""

    def __init__(self, context: Any) -> None:
        self.foreign: list[str] = []
        context.route("**/*", self._route)

    def _route(self, route: Any) -> None:
        url = route.request.url
        host = urllib.parse.urlsplit(url).hostname
        if url.startswith("data:") or host == "127.0.0.1":
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort("internetdisconnected")
