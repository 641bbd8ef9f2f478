"""Fixtures shared by the backend test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def directory(tmp_path: Path) -> str:
    """A private (0700) socket directory, as the direct transport's replicas use."""
    d = tmp_path / "sockets"
    d.mkdir(mode=0o700)
    return str(d)
