"""Composition on the local backend (issue 18): ``map`` over run-time lists, ``optional``
branches, node-chosen HTTP statuses, several graphs on one Input, graphs reading nothing of the
payload, and the selection fixes. The Ray side is tests/backends/test_composition_ray.py."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Any

import pytest
from fastapi import HTTPException as FastAPIHTTPException
from starlette.exceptions import HTTPException

import dagserve
from dagserve import CompileError, GraphError, HTTPError, NodeError, NoRouteError, RequestTimeoutError
from dagserve.observe.metrics import Metrics
from dagserve.offline.files import error_info
from dagserve.runtime.executor import RequestContext

# -- nodes ------------------------------------------------------------------------------------------


@dagserve.node
def detect(n: int) -> list[int]:
    return list(range(n))


@dagserve.node(max_batch_size=4, batch_wait_timeout_s=0.05)
async def classify(crops: list[int]) -> list[dict[str, int]]:
    await asyncio.sleep(0.01)
    return [{"crop": c, "batch": len(crops)} for c in crops]


@dagserve.node
def fails_at_two(x: int) -> int:
    if x == 2:
        raise ValueError("two is bad")
    return x * 10


@dagserve.node
def scale(x: int, factor: int, *, offset: int = 0) -> int:
    return x * factor + offset


@dagserve.node
class Model:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, x: int) -> int:
        return x * self.factor

    def predict(self, x: int, plus: int) -> int:
        return x * self.factor + plus


@dagserve.node
class HasMap:
    def map(self, xs: list[int]) -> str:
        return f"own map of {len(xs)}"


class Gauge:
    """How many calls run at once, at most."""

    def __init__(self) -> None:
        self.now = self.peak = 0


GAUGE = Gauge()


@dagserve.node
async def measured(x: int) -> int:
    GAUGE.now += 1
    GAUGE.peak = max(GAUGE.peak, GAUGE.now)
    await asyncio.sleep(0.05)
    GAUGE.now -= 1
    return x


@dagserve.node
def boom(x: int) -> int:
    raise RuntimeError(f"boom {x}")


@dagserve.node
def not_found(x: int) -> int:
    raise HTTPError(404, f"No item {x}.")


@dagserve.node
def teapot(x: int) -> int:
    raise HTTPException(418, detail="short and stout", headers={"x-teapot": "yes"})


@dagserve.node
def fastapi_conflict(x: int) -> int:
    raise FastAPIHTTPException(409, detail={"field": "x", "why": "taken"})


@dagserve.node(timeout_s=0.05)
async def too_slow(x: int) -> int:
    await asyncio.sleep(5)
    return x


@dagserve.node
async def slow(x: int) -> int:
    await asyncio.sleep(5)
    return x


@dagserve.node
def ident(x: Any) -> Any:
    return x


def local(graph: dagserve.Graph) -> dagserve.App:
    return dagserve.deploy(graph, backend="local")


# -- map --------------------------------------------------------------------------------------------


def test_map_calls_the_node_per_item_in_order_batched_and_empty_gives_empty() -> None:
    with dagserve.Input() as inp:
        crops = detect(inp["n"])
        graph = dagserve.Graph({"by_function": dagserve.map(classify, crops), "by_method": classify.map(crops)}, name="m")
    with local(graph) as app:
        out = app.call({"n": 6})
        assert [r["crop"] for r in out["by_function"]] == list(range(6))
        assert [r["crop"] for r in out["by_method"]] == list(range(6))
        # 12 items at once on a node batching 4: full batches formed, one call per item.
        sizes = app.backend.batch_sizes()["classify"]
        assert max(sizes) == 4 and sum(size * n for size, n in sizes.items()) == 12
        assert app.call({"n": 0}) == {"by_function": [], "by_method": []}


def test_map_items_run_concurrently() -> None:
    GAUGE.now = GAUGE.peak = 0
    with dagserve.Input() as inp:
        graph = dagserve.Graph(measured.map(detect(inp["n"])), name="concurrent")
    with local(graph) as app:
        assert app.call({"n": 5}) == [0, 1, 2, 3, 4]
    assert GAUGE.peak == 5


def test_a_failing_item_fails_the_request_naming_the_node_and_the_index() -> None:
    with dagserve.Input() as inp:
        graph = dagserve.Graph(fails_at_two.map(detect(inp["n"])), name="failing")
    with local(graph) as app:
        assert app.call({"n": 2}) == [0, 10]
        with pytest.raises(NodeError, match=r"Node 'fails_at_two' raised ValueError: two is bad \(at item 2 of 4") as info:
            app.call({"n": 4})
        assert info.value.node == "fails_at_two" and info.value.error_type == "ValueError"


def test_map_with_fixed_arguments_on_functions_model_instances_and_methods() -> None:
    model = Model(3)
    with dagserve.Input() as inp:
        items = detect(inp["n"])
        graph = dagserve.Graph(
            {
                "fn": dagserve.map(scale, items, inp["factor"], offset=1),
                "instance": model.map(items),
                "method": model.predict.map(items, 100),
                "own": HasMap().map(items),  # a model with a method named map keeps it
            },
            name="fixed",
        )
    with local(graph) as app:
        assert app.call({"n": 3, "factor": 2}) == {
            "fn": [1, 3, 5],
            "instance": [0, 3, 6],
            "method": [100, 103, 106],
            "own": "own map of 3",
        }


def test_map_timeout_applies_to_each_item_and_a_non_list_fails_naming_the_map() -> None:
    with dagserve.Input() as inp:
        graph = dagserve.Graph({"slow": too_slow.map(detect(inp["n"])), "bad": ident.map(inp["x"])}, name="t")
    with local(graph) as app:
        with pytest.raises(RequestTimeoutError, match=r"'too_slow' did not answer within its timeout_s=0.05.*\(at item [01] of 2"):
            app.call({"n": 2, "x": []})
        with pytest.raises(NodeError, match=r"Map 'ident' applies its node to each item of a list, but got a dict"):
            app.call({"n": 0, "x": {"a": 1}})


def test_map_is_checked_while_building() -> None:
    with dagserve.Input() as inp:
        with pytest.raises(GraphError, match=r"maps over a list a node produces at run time"):
            dagserve.map(classify, [1, 2])
        with pytest.raises(GraphError, match=r"is batched .* exactly one positional argument"):
            dagserve.map(classify, inp, 3)
        with pytest.raises(GraphError, match=r"maps a function node, a model instance or a method"):
            dagserve.map(len, inp)
        with pytest.raises(GraphError, match=r"cannot be called with these arguments"):
            dagserve.map(scale, inp)  # factor missing
        out = ident(scale.map(inp, 2))
    with pytest.raises(CompileError, match=r"Node 'detect' returns list but node 'scale' expects int"):
        with dagserve.Input() as inp2:
            dagserve.compile(dagserve.Graph(scale(detect(inp2), 2)))
    dagserve.compile(dagserve.Graph(out))  # list[int] items meet an int parameter


# -- optional ---------------------------------------------------------------------------------------


async def run(app: dagserve.App, payload: Any, **kw: Any) -> tuple[Any, RequestContext]:
    ctx = RequestContext()
    return await app.acall(payload, context=ctx, **kw), ctx


async def test_optional_gives_the_default_when_the_node_or_what_it_needs_fails() -> None:
    with dagserve.Input() as inp:
        x = inp["x"]
        graph = dagserve.Graph(
            {
                "raised": dagserve.optional(boom(x), default=-1),
                "upstream": dagserve.optional(ident(boom(x)), default="none"),
                "http": dagserve.optional(not_found(x)),
                "timeout": dagserve.optional(too_slow(x), on_error=lambda e: type(e).__name__),
                "no_route": dagserve.optional(dagserve.switch(x, {0: ident(x)}), on_error=lambda e: type(e).__name__),
                "fine": dagserve.optional(ident(x), default=0),
            },
            name="soft",
        )
    with local(graph) as app:
        out, ctx = await run(app, {"x": 1})
        assert out == {
            "raised": -1,
            "upstream": "none",
            "http": None,
            "timeout": "RequestTimeoutError",
            "no_route": "NoRouteError",
            "fine": 1,
        }
        assert sorted(ctx.skipped) == ["boom", "ident", "not_found", "switch", "too_slow"]
        assert isinstance(ctx.skipped["not_found"], HTTPError)
        out, ctx = await run(app, {"x": 0})
        assert out["no_route"] == 0 and "switch" not in ctx.skipped


async def test_readers_of_the_node_itself_fail_and_the_request_deadline_still_ends_the_request() -> None:
    with dagserve.Input() as inp:
        b = boom(inp)
        shared = dagserve.Graph({"soft": dagserve.optional(b, default=0), "hard": b}, name="shared")
        deadline = dagserve.Graph(dagserve.optional(slow(inp), default=0), name="deadline")
    with local(shared) as app:
        with pytest.raises(NodeError, match="boom 1"):
            await app.acall(1)
    with local(deadline) as app:
        with pytest.raises(RequestTimeoutError, match=r"did not finish within 0.1 s; still running: slow"):
            await app.acall(1, timeout_s=0.1)


async def test_on_error_receives_the_error_and_its_own_failure_names_the_optional() -> None:
    seen: list[BaseException] = []

    def fallback(error: BaseException) -> str:
        seen.append(error)
        return "fallback"

    def broken(error: BaseException) -> str:
        raise KeyError("nope")

    def forbid(error: BaseException) -> str:
        raise HTTPException(403, "not without the tagger")

    @dagserve.node
    def grow(tags: list[str]) -> list[str]:
        tags.append("grown")  # changes what it was given
        return tags

    with dagserve.Input() as inp:
        graph = dagserve.Graph({"a": dagserve.optional(boom(inp), on_error=fallback)}, name="on_error")
        bad = dagserve.Graph(dagserve.optional(boom(inp), on_error=broken), name="bad_on_error")
        chosen = dagserve.Graph(dagserve.optional(boom(inp), on_error=forbid), name="chosen_status")
        grown = dagserve.Graph(grow(dagserve.optional(boom(inp), default=[])), name="grown")
    with local(graph) as app:
        assert (await app.acall(3)) == {"a": "fallback"}
        assert isinstance(seen[0], NodeError) and seen[0].node == "boom"
    with local(chosen) as app:
        with pytest.raises(HTTPError, match="not without the tagger") as status:
            await app.acall(3)
        assert (status.value.status_code, status.value.node) == (403, "optional(boom)")
    with local(grown) as app:
        assert [await app.acall(1), await app.acall(2)] == [["grown"], ["grown"]]  # each request its own default
    with local(bad) as app:
        with pytest.raises(NodeError, match=r"The on_error function of 'optional\(boom\)' raised KeyError") as info:
            await app.acall(3)
        assert info.value.node == "optional(boom)"


def test_optional_is_checked_while_building() -> None:
    with dagserve.Input() as inp:
        with pytest.raises(GraphError, match="takes a graph node"):
            dagserve.optional(3)
        with pytest.raises(GraphError, match="takes a constant default"):
            dagserve.optional(ident(inp), default=ident(inp))
        with pytest.raises(GraphError, match="takes a function of the error"):
            dagserve.optional(ident(inp), on_error=5)
        dagserve.Graph(dagserve.optional(ident(inp)))


async def test_skipped_nodes_are_counted_and_their_failure_keeps_its_outcome() -> None:
    metrics = Metrics()
    with dagserve.Input() as inp:
        graph = dagserve.Graph({"a": dagserve.optional(boom(inp)), "b": ident(inp)}, name="counted")
    with local(graph) as app:
        metrics.instrument(app)
        for i in range(3):
            await app.acall(i)
        text = metrics.render().decode()
    assert 'dagserve_node_skipped_total{graph="counted",node="boom"} 3.0' in text
    assert 'dagserve_node_requests_total{graph="counted",node="boom",outcome="node_error"} 3.0' in text
    assert 'dagserve_requests_total{graph="counted",outcome="ok",protocol="python"} 3.0' in text


# -- node-chosen HTTP statuses ------------------------------------------------------------------------


def test_http_errors_keep_their_status_and_name_the_node() -> None:
    with dagserve.Input() as inp:
        route = dagserve.switch(
            inp["kind"],
            {"dagserve": not_found(inp["x"]), "starlette": teapot(inp["x"]), "fastapi": fastapi_conflict(inp["x"])},
        )
        graph = dagserve.Graph(route, name="statuses")
    with local(graph) as app:
        with pytest.raises(HTTPError, match="No item 7") as info:
            app.call({"kind": "dagserve", "x": 7})
        assert (info.value.status_code, info.value.node, info.value.error_type) == (404, "not_found", "HTTPError")
        with pytest.raises(HTTPError, match="short and stout") as info:
            app.call({"kind": "starlette", "x": 1})
        assert (info.value.status_code, info.value.node, info.value.headers) == (418, "teapot", {"x-teapot": "yes"})
        assert info.value.error_type == "HTTPException"
        with pytest.raises(HTTPError) as info:
            app.call({"kind": "fastapi", "x": 1})
        assert (info.value.status_code, info.value.detail) == (409, {"field": "x", "why": "taken"})
        # A `dagserve batch` error record carries the status, as the ingress would answer.
        assert error_info(info.value) == {
            "type": "HTTPException",
            "node": "fastapi_conflict",
            "message": str(info.value),
            "status": 409,
            "detail": {"field": "x", "why": "taken"},
        }


def test_batch_error_records_carry_the_status_a_node_chose(tmp_path: Any) -> None:
    import json

    from dagserve.offline.files import run_batch

    source = tmp_path / "in.jsonl"
    source.write_text('{"x": 1}\n{"x": -2}\n')
    with dagserve.Input() as inp:
        graph = dagserve.Graph(dagserve.switch(inp["x"], {1: ident(inp["x"])}, default=not_found(inp["x"])), name="b")
    with local(graph) as app:
        summary = run_batch(app, source, tmp_path / "out.jsonl")
    assert (summary.succeeded, summary.failed) == (1, 1)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert records[1]["error"] == {"type": "HTTPError", "node": "not_found", "message": "No item -2.", "status": 404}


def test_http_error_checks_its_status_and_pickles_with_its_fields() -> None:
    import pickle

    with pytest.raises(ValueError, match="400-599"):
        HTTPError(200, "fine")
    err = HTTPError(429, "slow down", headers={"retry-after": "3"})
    err.node = "limiter"
    back = pickle.loads(pickle.dumps(err))
    assert (back.status_code, back.detail, back.headers, back.node, str(back)) == (429, "slow down", {"retry-after": "3"}, "limiter", "slow down")
    assert isinstance(back, dagserve.DagserveError) and str(HTTPError(404)) == "Not Found"


# -- graphs on one Input, graphs reading nothing ---------------------------------------------------------


def test_several_graphs_on_one_input_compile_and_dead_nodes_are_still_reported() -> None:
    with dagserve.Input() as inp:
        a = dagserve.Graph(scale(inp, 2), name="a")
        b = dagserve.Graph(scale(inp, 3), name="b")
        dead = ident(inp)
    with pytest.raises(CompileError, match=r"never reach its output: ident .*another graph built on its Input"):
        dagserve.compile(a)
    c = dagserve.Graph(dead, name="c")  # held: a graph nobody holds is no graph
    with local(a) as app_a, local(b) as app_b:
        assert (app_a.call(5), app_b.call(5)) == (10, 15)
    dagserve.compile(c)


def test_graphs_reading_nothing_of_the_payload_run_per_request() -> None:
    counter = itertools.count()

    @dagserve.node
    def tick() -> int:
        return next(counter)

    @dagserve.node
    class Clock:
        def now(self) -> str:
            return "noon"

    with local(dagserve.Graph(tick, name="tick")) as app:
        assert [app.call(None), app.call({"ignored": 1})] == [0, 1]
    with local(dagserve.Graph(tick >> ident, name="chain")) as app:  # a constant pipeline
        assert app.call(None) == 2
    with local(dagserve.Graph({"t": Clock().now(), "c": scale(2, 3)}, name="constant")) as app:
        assert app.call({}) == {"t": "noon", "c": 6}


# -- selection fixes, one-branch splits -------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Plain:
    def __init__(self) -> None:
        self.x = 4


def test_selection_reads_attributes_of_dataclasses_and_plain_objects() -> None:
    with dagserve.Input() as inp:
        graph = dagserve.Graph(ident(inp["x"]), name="attrs")
    with local(graph) as app:
        assert app.call(Point(3, 4)) == 3
        assert app.call(Plain()) == 4
        assert app.call({"x": 5}) == 5
        with pytest.raises(dagserve.RequestError, match="The payload has no 'x'"):
            app.call(Point.__new__(Point))


def test_keys_are_str_or_int() -> None:
    with dagserve.Input() as inp:
        for key in [(1, 2), 1.5, True, None]:
            with pytest.raises(GraphError, match=r"keys are str \(a field\) or int \(a position\)"):
                inp[key]
        inp["a"], inp[0]  # noqa: B018


def test_a_split_with_one_branch_routes_everything_there() -> None:
    with dagserve.Input() as inp:
        graph = dagserve.Graph(dagserve.split({"only": scale(inp, 2)}, {"only": 100}, name="one"), name="one_step")
    with local(graph) as app:
        ctx = RequestContext()
        assert asyncio.run(app.acall(4, context=ctx)) == 8
        assert ctx.route == {"one": "only"}


def test_no_route_is_still_raised_without_optional() -> None:
    with dagserve.Input() as inp:
        graph = dagserve.Graph(dagserve.switch(inp, {1: ident(inp)}), name="strict")
    with local(graph) as app, pytest.raises(NoRouteError):
        app.call(2)
