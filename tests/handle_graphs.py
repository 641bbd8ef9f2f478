"""Graphs whose nodes call other deployments through handles (issue 18 items 1, 5, 10), shared by
the local tests (tests/runtime/test_handles.py) and the Ray ones (tests/backends/test_handles_ray.py).
Importable by name, so Ray replicas import them instead of unpickling copies."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import dagserve


@dagserve.node(max_batch_size=8, batch_wait_timeout_s=0.05, max_ongoing_requests=64)
class Classifier:
    """Batched: a list of crops in, one label per crop out."""

    def __init__(self, suffix: str = "") -> None:
        self.suffix = suffix
        self.items = 0

    async def __call__(self, crops: list[int]) -> list[str]:
        self.items += len(crops)
        await asyncio.sleep(0.05)  # long enough that concurrent calls queue behind a running batch
        return [f"c{c}{self.suffix}" for c in crops]

    async def seen(self) -> int:
        """Not batched (it takes no list): reached through a handle all the same."""
        return self.items


@dagserve.node
class Tools:
    """Several methods, reached as handle.method; one reports the request id it sees."""

    def double(self, x: int) -> int:
        return 2 * x

    async def request_id(self) -> str | None:
        return dagserve.current_request_id()

    async def time_left(self) -> float | None:
        """The request's time left as this callee sees it (the deadline travelled with the call)."""
        from dagserve.runtime.handles import current_request

        ctx = current_request()
        return None if ctx is None or ctx.deadline is None else ctx.deadline - time.monotonic()

    def fail(self, x: int) -> int:
        raise ValueError(f"bad {x}")

    async def slow(self, s: float) -> float:
        await asyncio.sleep(s)
        return s


@dagserve.node
class FanOut:
    """Async: classifies a data-dependent number of crops through a handle, concurrently."""

    def __init__(self, classifier: Any, tools: dict[str, Any]) -> None:
        self.classifier = classifier
        self.tools = tools["t"]

    async def __call__(self, n: int) -> dict[str, Any]:
        labels = await asyncio.gather(*(self.classifier.acall(i) for i in range(n)))
        doubled = await self.tools.double.acall(n)
        remote = await self.tools.double.remote(1)
        return {"labels": list(labels), "doubled": doubled, "remote": remote, "rid": await self.tools.request_id.acall()}


@dagserve.node
class SyncUser:
    """Sync code (a worker thread) calling through handles held in a list."""

    def __init__(self, handles: list[Any]) -> None:
        self.classifier, self.tools = handles

    def __call__(self, n: int) -> dict[str, Any]:
        return {
            "label": self.classifier.call(n),
            "doubled": self.tools.double.call(n),
            "remote": self.tools.double.remote(n + 1).result(),
            "rid": self.tools.request_id.call(),
        }


@dagserve.node
def use_handle(n: int, tools: Any) -> int:
    """A function node given a handle as a call argument (sync: in a worker thread)."""
    return int(tools.double.call(n)) + 1


@dagserve.node
class OnLoop:
    """Async code misusing the blocking call: must get HandleError, not a deadlock."""

    def __init__(self, tools: Any) -> None:
        self.tools = tools

    async def __call__(self, n: int) -> int:
        return int(self.tools.double.call(n))


@dagserve.node
class Retrier:
    """Calls a handle, retrying on failure (the handle-driven retry of examples/detect_classify)."""

    def __init__(self, tools: Any) -> None:
        self.tools = tools

    async def __call__(self, payload: dict[str, Any]) -> Any:
        if payload.get("time_left"):
            return await self.tools.time_left.acall()
        if payload.get("slow"):
            return await self.tools.slow.acall(payload["slow"])
        try:
            return await self.tools.fail.acall(payload["x"])
        except dagserve.NodeError as exc:
            return {"node": exc.node, "error": exc.error_type}


@dagserve.node
class Counter:
    """State shared by every graph that uses this instance (items 5 and 10)."""

    def __init__(self) -> None:
        self.count = 0
        self.started = time.time()

    def __call__(self, x: Any) -> int:
        self.count += 1
        return self.count


@dagserve.node
def sentiment(text: str) -> float:
    if text == "boom":
        raise ValueError("boom")
    return float("good" in text)


@dagserve.node
def post(review: dict) -> dict:
    return {"post": review}


def review_graph(counter: Any) -> dagserve.Graph:
    """A graph called inside others (item 10)."""
    with dagserve.Input() as rin:
        return dagserve.Graph({"score": sentiment(rin["text"]), "n": counter(rin)}, name="review")


def fan_out_graph(classifier: Any = None, tools: Any = None) -> dagserve.Graph:
    classifier, tools = classifier or Classifier(), tools or Tools()
    with dagserve.Input() as inp:
        out = {
            "fan": FanOut(classifier, {"t": tools})(inp["n"]),
            "sync": SyncUser([classifier, tools])(inp["n"]),
            "arg": use_handle(inp["n"], tools),
        }
    return dagserve.Graph(out, name="fan_out")


def retry_graph(timeout_s: float = 0.5, tools: Any = None) -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = Retrier(tools or Tools().options(timeout_s=timeout_s))(inp)
    return dagserve.Graph(out, name="retry")


def batch_graph() -> dagserve.Graph:
    """A handle-only batched model: every call to it comes through the FanOut handle."""
    with dagserve.Input() as inp:
        out = FanOut(Classifier(), {"t": Tools()})(inp["n"])
    return dagserve.Graph(out, name="batch")


def shared_graphs() -> tuple[dagserve.Graph, dagserve.Graph, Any]:
    """Two graphs using one Counter instance (item 5)."""
    counter = Counter()
    with dagserve.Input() as a:
        ga = dagserve.Graph({"a": counter(a)}, name="ga")
    with dagserve.Input() as b:
        gb = dagserve.Graph({"b": counter(b["x"])}, name="gb")
    return ga, gb, counter


#: ``dagserve run tests.handle_graphs:SHARED``: the two graphs sharing one Counter, as a list.
SHARED = list(shared_graphs()[:2])
