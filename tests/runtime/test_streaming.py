"""Streaming on the local backend, from Python: generator nodes, the checks the compiler makes,
order, errors, closing, deadlines and a slow reader (tests/stream_checks.py; the Ray backend runs
the same checks in tests/backends/test_streaming_ray.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import dagserve
from dagserve import CompileError

from .. import stream_checks as sc
from .. import stream_graphs as sg


@pytest.fixture(scope="module")
def chain() -> Iterator[dagserve.App]:
    with dagserve.deploy(sg.chain, backend="local") as app:
        yield app


@pytest.fixture(scope="module")
def mixed() -> Iterator[dagserve.App]:
    with dagserve.deploy(sg.mixed, backend="local") as app:
        yield app


def test_plan_marks_streaming_steps() -> None:
    plan = dagserve.compile(sg.chain)
    assert {s.name: s.streams for s in plan.steps if s.kind == "call"} == {
        "prepare": False,
        "produce": True,
        "relay": True,
    }
    assert plan.streams and plan.summary()["streams"] is True
    assert not dagserve.compile(sg.summed).streams


def test_order(chain: dagserve.App, mixed: dagserve.App) -> None:
    for app in (chain, mixed):
        assert app.streams
        sc.check_order(app)


def test_other_shapes() -> None:
    with dagserve.deploy(sg.words, backend="local") as app:  # a model method that streams
        assert list(app.stream({"n": 3})) == ["w0", "w1", "w2"]
    with dagserve.deploy(sg.summed, backend="local") as app:  # a stream read into one value
        assert not app.streams
        assert app.call({"n": 4}) == 6
        assert list(app.stream({"n": 4})) == [6]  # a graph that does not stream: one item
    with dagserve.deploy(sg.sync_chain, backend="local") as app:
        assert list(app.stream({"n": 3})) == [0, 1, 2]


def test_error_mid_stream(chain: dagserve.App, mixed: dagserve.App) -> None:
    sc.check_error_mid_stream(chain)
    sc.check_error_mid_stream(mixed)


def test_close_stops_the_generator(chain: dagserve.App, mixed: dagserve.App, tmp_path: Any) -> None:
    sc.check_close_stops(chain, str(tmp_path / "async.log"))
    sc.check_close_stops(mixed, str(tmp_path / "sync.log"))


def test_cancelled_reader_stops_the_generator(chain: dagserve.App, tmp_path: Any) -> None:
    log = str(tmp_path / "steps.log")

    async def read_then_cancel() -> None:
        async def reader() -> None:
            async for _ in chain.astream({"n": 1000, "delay": 0.02, "log": log}):
                pass

        task = asyncio.ensure_future(reader())
        while sc.steps_taken(log) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(read_then_cancel())
    assert sc.wait_until_still(log) < 20


def test_deadlines(chain: dagserve.App, mixed: dagserve.App) -> None:
    for app in (chain, mixed):
        sc.check_first_item_deadline(app)
        sc.check_stream_timeout(app)


def test_slow_reader_keeps_the_generator_close(chain: dagserve.App, mixed: dagserve.App, tmp_path: Any) -> None:
    # Pulled end to end: the generator is at most one item ahead of the reader (the one in hand).
    sc.check_slow_reader(chain, str(tmp_path / "async.log"), ahead=1)
    sc.check_slow_reader(mixed, str(tmp_path / "sync.log"), ahead=1)


def test_observers_see_a_stream_once_with_its_items(chain: dagserve.App) -> None:
    seen: list[Any] = []
    items: list[tuple[str, str]] = []
    chain.observers.append(lambda app, ctx, error, s: seen.append(error))
    chain.item_observer = lambda node, kind, s: items.append((node, kind))
    try:
        assert list(chain.stream({"n": 3})) == [0, 1, 2]
    finally:
        chain.observers.pop()
        chain.item_observer = None
    assert seen == [None]
    # Every stream the ingress process reads reports: here the generator and its reader.
    for node in ("produce", "relay"):
        assert [kind for n, kind in items if n == node] == ["first", "gap", "gap"]
    assert chain.in_flight == 0


# -- what the compiler refuses -----------------------------------------------------------------------


@dagserve.node
async def gen(x: Any) -> AsyncIterator[int]:
    yield 1


@dagserve.node
def show(x: Any) -> Any:
    return x


@dagserve.node(max_batch_size=4)
def batched_gen(xs: list[Any]) -> Iterator[int]:
    yield 1


def _graph(build: Any) -> dagserve.Graph:
    with dagserve.Input() as inp:
        return dagserve.Graph(build(inp), name="bad")


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda inp: {"a": gen(inp)}, "inside a structure"),
        (lambda inp: (lambda s: {"a": show(s), "b": show.options(name="show2")(s)})(gen(inp)), "read by"),
        (lambda inp: show([gen(inp)]), "other than as a whole argument"),
        (lambda inp: gen(inp)["x"], "other than as a whole argument"),
        (lambda inp: batched_gen(inp), "batched"),
    ],
)
def test_compile_errors(build: Any, words: str) -> None:
    with pytest.raises(CompileError, match=words):
        dagserve.compile(_graph(build))
