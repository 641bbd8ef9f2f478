"""Streams over the direct transport (STREAM, ITEM and CREDIT frames): real Unix sockets, no Ray.
End to end on Ray: tests/backends/test_streaming_ray.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from dagserve import NodeError
from dagserve.backends.ray.direct.frames import STREAM_WINDOW

from .test_direct import header, replicas, settle


class Generator:
    """A replica's streams: ``count`` items; counts the steps it took and whether it was closed."""

    def __init__(self) -> None:
        self.steps = 0
        self.closed = 0

    async def stream(self, head: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        n, fail_at = args
        try:
            for i in range(n):
                if i == fail_at:
                    raise NodeError(f"Node {head[1]!r} raised ValueError: at {i}", node=head[1], error_type="ValueError")
                self.steps += 1
                yield i
        finally:
            self.closed += 1


@pytest.fixture
def gen() -> Generator:
    return Generator()


async def test_items_come_in_order_then_the_end_or_the_error(directory: str, gen: Generator) -> None:
    async with replicas(directory, "r1", server={"stream": gen.stream}) as c:
        assert [x async for x in c.pool.stream(header("gen"), (50, None), {})] == list(range(50))
        got = []
        with pytest.raises(NodeError) as info:
            async for x in c.pool.stream(header("gen"), (5, 3), {}):
                got.append(x)
        assert got == [0, 1, 2] and info.value.node == "Step"
        await settle()
        assert not c.pool._conns["r1"].calls  # both streams gave their slot back


async def test_a_slow_reader_holds_the_generator_within_the_window(directory: str, gen: Generator) -> None:
    async with replicas(directory, "r1", server={"stream": gen.stream}) as c:
        stream = c.pool.stream(header("gen"), (1000, None), {})
        for read in range(1, 3 * STREAM_WINDOW):
            await stream.__anext__()
            await settle()
            assert gen.steps <= read + STREAM_WINDOW
        await stream.aclose()
        await settle()
        assert gen.closed == 1 and gen.steps < 1000


async def test_closing_a_stream_stops_the_generator_and_frees_its_slot(directory: str, gen: Generator) -> None:
    async with replicas(directory, "r1", server={"stream": gen.stream}, max_ongoing=1) as c:
        stream = c.pool.stream(header("gen"), (1000, None), {})
        assert await stream.__anext__() == 0
        queued = c.pool.call(header("echo"), (7,), {})  # waits for the stream's slot
        await settle()
        assert not queued.future.done()
        await stream.aclose()
        assert await queued == ("r1", 7)
        await settle()
        assert gen.closed == 1 and gen.steps <= 1 + STREAM_WINDOW
