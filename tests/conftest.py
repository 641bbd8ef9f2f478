"""Shared fixtures. Ray-backed fixtures live in the integration test modules (one Ray per module)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_runtime_dir() -> Iterator[None]:
    """Admin token files of every server the suite starts (``dagserve run`` on loopback makes one)
    go to a directory of this session, never to the user's own runtime or config directory."""
    with tempfile.TemporaryDirectory(prefix="dagserve-tests-") as runtime:
        os.chmod(runtime, 0o700)
        old = os.environ.get("XDG_RUNTIME_DIR")
        os.environ["XDG_RUNTIME_DIR"] = runtime
        yield
        if old is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = old
