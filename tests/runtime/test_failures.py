"""``runtime/failures.py``: the traceback a node's failure carries to the server's log."""

from __future__ import annotations

import pickle

import dagserve
from dagserve.runtime.failures import node_failure, node_traceback


def _lookup(prices: dict[str, int], item: str) -> int:
    try:
        return prices[item]
    except KeyError as exc:
        raise ValueError(f"no price for {item!r}") from exc


def test_the_traceback_keeps_the_nodes_frames_and_its_causes() -> None:
    try:
        _lookup({}, "kiwi")
    except ValueError as exc:
        error = node_failure("Pricer", exc)
    assert isinstance(error, dagserve.NodeError)
    tb = error.traceback or ""
    assert tb.index("KeyError: 'kiwi'") < tb.index("direct cause") < tb.index("ValueError: no price for 'kiwi'")
    assert tb.count(f'File "{__file__}"') == 3  # this test, and _lookup twice (the cause, then the raise)
    again = pickle.loads(pickle.dumps(error))  # it crosses Ray's process boundary with the error
    assert again.traceback == tb and again.node == "Pricer"


def test_dagserves_frames_are_folded_into_one_marked_line() -> None:
    @dagserve.node
    def boom(x: int) -> int:
        raise RuntimeError(f"bad {x}")

    with dagserve.Input() as inp:
        graph = dagserve.Graph(boom(inp), name="boom")
    with dagserve.deploy(graph, backend="local") as app:
        try:
            app.call(1)
        except dagserve.NodeError as exc:
            tb = exc.traceback or ""
    lines = tb.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1].startswith("  [") and lines[1].endswith("frame(s) of dagserve, Ray or the event loop hidden]")
    assert lines[2].endswith("in boom") and lines[-1] == "RuntimeError: bad 1"
    assert "dagserve/runtime" not in tb and node_traceback(RuntimeError("x")).endswith("RuntimeError: x\n")
