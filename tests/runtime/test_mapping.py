"""App.map / App.map_results: order, bounded lazy reading, failures in place, on both backends.

The core tests run once on the local backend and once on a real local Ray (``-m ray``), sharing
one Ray and one deployed graph per backend for the whole module.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import dagserve
from dagserve import AppClosedError, DagserveError, InputValidationError, MapResult, NodeError
from dagserve.cli.main import main
from dagserve.offline.files import run_batch

from ..cli import test_cli_batch as cb

# ---------------------------------------------------------------------------------------------
# The graph: a jittery function node feeding a batched model node. The payload steers it.
# ---------------------------------------------------------------------------------------------


@dagserve.node
async def jitter(item: dict[str, Any]) -> int:
    """Sleeps a random few ms (so completions come out of order), or as long as asked; may fail."""
    await asyncio.sleep(item.get("delay", random.uniform(0, 0.004)))
    if item.get("fail"):
        raise ValueError(f"item {item['x']} was told to fail")
    return int(item["x"])


@dagserve.node(max_batch_size=16, batch_wait_timeout_s=0.005)
class Double:
    """A batched model node; each result says how large its batch was."""

    async def __call__(self, xs: list[int]) -> list[dict[str, int]]:
        return [{"x": x, "y": 2 * x, "batch": len(xs)} for x in xs]


def build_graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        return dagserve.Graph(Double()(jitter(inp)), name="offline_test")


graph = build_graph()


def payloads(n: int, **extra: Any) -> Iterator[dict[str, Any]]:
    return ({"x": i, **extra} for i in range(n))


class Counting:
    """An endless payload generator that records how far it has been read."""

    def __init__(self) -> None:
        self.consumed = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in itertools.count():
            self.consumed += 1
            yield {"x": i}


# ---------------------------------------------------------------------------------------------
# The shared Ray (tests/conftest.py), one deployed graph per backend
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(shared_ray: None) -> None:
    """The shared local Ray of tests/conftest.py (loopback-only, no dashboard)."""


@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def app(request: pytest.FixtureRequest) -> Iterator[dagserve.App]:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    deployed = dagserve.deploy(graph, backend=request.param)
    try:
        yield deployed
    finally:
        deployed.shutdown()


# ---------------------------------------------------------------------------------------------
# Core behaviour, on both backends
# ---------------------------------------------------------------------------------------------


def test_ordered_map_keeps_input_order_and_fills_batches(app: dagserve.App) -> None:
    out = list(app.map(payloads(300), concurrency=32))
    assert [o["x"] for o in out] == list(range(300))
    assert all(o["y"] == 2 * o["x"] for o in out)
    # Batched nodes see many payloads at once: the offline run fills their batches.
    assert max(o["batch"] for o in out) > 1


def test_unordered_map_yields_as_results_complete(app: dagserve.App) -> None:
    # Payload 0 is slow, so with ordered=False it arrives after the others.
    items = [{"x": 0, "delay": 1.0}, *({"x": i, "delay": 0.0} for i in range(1, 20))]
    results = list(app.map_results(items, concurrency=20, ordered=False))
    assert sorted(r.index for r in results) == list(range(20))
    assert results[-1].index == 0
    assert all(r.ok and r.value["x"] == r.index and r.payload is items[r.index] for r in results)


def test_a_generator_is_read_lazily_within_the_window(app: dagserve.App) -> None:
    source = Counting()
    concurrency = 8
    seen = 0
    # An endless generator: materialising it would never return.
    for k, out in enumerate(app.map(source, concurrency=concurrency), start=1):
        assert out["x"] == k - 1
        # Pulled but not yet yielded stays within concurrency + the reorder window (= concurrency).
        assert source.consumed <= k + 2 * concurrency
        seen = k
        if k == 200:
            break
    assert seen == 200
    assert source.consumed <= 200 + 2 * concurrency


def test_failures_are_yielded_in_place(app: dagserve.App) -> None:
    items = [{"x": i, "fail": i in (3, 7)} for i in range(10)]
    out = list(app.map(items, concurrency=4))
    assert [type(o).__name__ for o in out[2:5]] == ["dict", "NodeError", "dict"]
    err = out[7]
    assert isinstance(err, NodeError) and err.node == "jitter" and err.error_type == "ValueError"
    assert "item 7 was told to fail" in str(err)
    assert [o["x"] for i, o in enumerate(out) if i not in (3, 7)] == [0, 1, 2, 4, 5, 6, 8, 9]


def test_map_results_carry_index_payload_error_and_timings(app: dagserve.App) -> None:
    items = [{"x": 0}, {"x": 1, "fail": True}, {"y": 2}]
    r0, r1, r2 = app.map_results(items, concurrency=3)
    assert isinstance(r0, MapResult) and r0.ok and r0.index == 0 and r0.error is None
    assert set(r0.timings) == {"jitter", "Double"}
    assert not r1.ok and r1.value is None and isinstance(r1.error, NodeError) and r1.payload == {"x": 1, "fail": True}
    assert not r2.ok and isinstance(r2.error, NodeError) and r2.error.error_type == "KeyError"


def test_without_return_exceptions_the_first_failure_raises(app: dagserve.App) -> None:
    items = [{"x": i, "fail": i == 5} for i in range(50)]
    got: list[int] = []
    with pytest.raises(NodeError, match=r"Node 'jitter' raised ValueError: item 5 was told to fail"):
        for out in app.map(items, concurrency=4, return_exceptions=False):
            got.append(out["x"])
    assert got == [0, 1, 2, 3, 4]
    assert app.call({"x": 1}) == {"x": 1, "y": 2, "batch": 1}  # the App is still fine afterwards


def test_a_failing_source_raises_after_the_results_before_it(app: dagserve.App) -> None:
    def source() -> Iterator[dict[str, int]]:
        yield from payloads(5)
        raise OSError("disk went away")

    got: list[int] = []
    with pytest.raises(OSError, match="disk went away"):
        for out in app.map(source(), concurrency=3):
            got.append(out["x"])
    assert got == [0, 1, 2, 3, 4]


def test_breaking_out_early_cancels_the_rest(app: dagserve.App) -> None:
    slow = payloads(100, delay=0.3)
    first = next(iter(app.map([{"x": -1, "delay": 0.0}, *slow], concurrency=16)))
    assert first["x"] == -1
    # The abandoned generator is closed by now; the App keeps serving.
    assert app.call({"x": 2, "delay": 0.0})["y"] == 4


# ---------------------------------------------------------------------------------------------
# Local only: the semantic checks that need to look inside a node, and argument errors
# ---------------------------------------------------------------------------------------------

_active = 0
_peak = 0
_peak_lock = threading.Lock()


@dagserve.node
async def gauge(x: int) -> int:
    global _active, _peak
    with _peak_lock:
        _active += 1
        _peak = max(_peak, _active)
    await asyncio.sleep(0.005)
    with _peak_lock:
        _active -= 1
    return x


def test_concurrency_bounds_payloads_in_flight() -> None:
    global _peak
    with dagserve.Input() as inp:
        g = dagserve.Graph(gauge(inp), name="gauge")
    _peak = 0
    with dagserve.deploy(g, backend="local") as app:
        assert list(app.map(range(200), concurrency=5)) == list(range(200))
    assert 1 < _peak <= 5


def test_argument_and_state_errors() -> None:
    app = dagserve.deploy(graph, backend="local")
    with pytest.raises(DagserveError, match=r"App\.map\(concurrency=0\): concurrency must be a positive integer"):
        app.map([], concurrency=0)
    assert list(app.map([])) == []

    async def inside() -> None:
        with pytest.raises(DagserveError, match=r"App\.map blocks and cannot run inside an event loop"):
            app.map([{"x": 1}])

    asyncio.run(inside())
    app.shutdown()
    with pytest.raises(AppClosedError, match="was shut down"):
        app.map([{"x": 1}])


def test_shutdown_during_a_map_ends_it_with_app_closed() -> None:
    app = dagserve.deploy(graph, backend="local")
    results = app.map(payloads(1000, delay=0.05), concurrency=4)
    assert next(results)["x"] == 0
    threading.Timer(0.05, app.shutdown).start()
    with pytest.raises(AppClosedError, match="was shut down"):
        for _ in results:
            pass


def test_schema_errors_are_results_too() -> None:
    from pydantic import BaseModel

    class Item(BaseModel):
        x: int

    with dagserve.Input(schema=Item) as inp:
        g = dagserve.Graph(gauge(inp["x"]), name="schema")
    with dagserve.deploy(g, backend="local") as app:
        out = list(app.map([{"x": 1}, {"x": "nope"}, {"x": 3}]))
    assert out[0] == 1 and out[2] == 3
    assert isinstance(out[1], InputValidationError) and out[1].errors[0]["loc"] == ["x"]



# ---------------------------------------------------------------------------------------------
# run_batch and `dagserve batch --backend ray` on Ray (the local versions are in test_cli_batch;
# they live here to share this module's Ray)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_batch_app(ray_cluster: None) -> Iterator[dagserve.App]:
    deployed = dagserve.deploy(cb.graph, backend="ray")
    try:
        yield deployed
    finally:
        deployed.shutdown()


@pytest.mark.ray
def test_ray_batch_jsonl_and_csv_round_trips_with_error_rows(ray_batch_app: dagserve.App, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    s = run_batch(ray_batch_app, cb.mixed_jsonl(tmp_path / "in.jsonl"), out, concurrency=16)
    assert (s.processed, s.failed) == (26, 3)
    cb.check_mixed_jsonl(cb.read_records(out))
    s = run_batch(ray_batch_app, cb.mixed_csv(tmp_path / "in.csv"), out, overwrite=True)
    assert (s.processed, s.failed) == (5, 2)
    cb.check_mixed_csv(cb.read_records(out))


@pytest.mark.ray
def test_ray_batch_interrupted_run_resumes_once_per_input(ray_batch_app: dagserve.App, tmp_path: Path) -> None:
    n = 200
    src = cb.write_jsonl(tmp_path / "in.jsonl", cb.good(n))
    out = tmp_path / "out.jsonl"

    def interrupt(summary: Any) -> None:
        if summary.processed == 80:
            raise KeyboardInterrupt  # Ctrl-C half-way

    first = run_batch(ray_batch_app, src, out, concurrency=32, on_progress=interrupt)
    assert first.interrupted and first.processed == 80
    with out.open("a") as f:
        f.write('{"index": 80, "li')  # and a half-written line, as a kill would leave
    second = run_batch(ray_batch_app, src, out, concurrency=32, resume=True)
    assert (second.resumed_from, second.processed, second.total_failed) == (80, n - 80, 0)
    records = cb.read_records(out)
    assert [r["index"] for r in records] == list(range(n))
    assert [r["output"]["id"] for r in records] == list(range(n))


@pytest.mark.ray
def test_ray_batch_command_backend_flag(ray_batch_app: dagserve.App, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    args = ["batch", "tests.cli.test_cli_batch:ray_graph", str(cb.mixed_jsonl(tmp_path / "in.jsonl")), "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--backend", "ray"], catch_exceptions=False)
    assert result.exit_code == 1 and "deployed 'cli_batch_ray' on ray" in result.output
    assert "3 of 26 failed" in result.output
    cb.check_mixed_jsonl(cb.read_records(out))
    assert ray_batch_app.call({"id": 1, "text": "a"}) == {"id": 1, "upper": "A"}  # untouched by the command
