from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the module."""
    directory: Path = tmp_path_factory.mktemp("redis")
    with RedisServer(directory) as url:
        yield url
