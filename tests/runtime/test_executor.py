"""The dataflow executor against a recording Runner (unit tests of runtime/executor.py alone)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import dagserve
from dagserve import InputValidationError, NodeError, NoRouteError, RequestError, RequestTimeoutError
from dagserve.compiler.plan import Step
from dagserve.runtime.executor import Executor, RequestContext, select, validate_payload

from .. import example_graphs as eg


class RecordingRunner:
    """Runs node code directly on the loop and records the order of calls."""

    def __init__(self, passthrough: bool = False, delay: float = 0.0) -> None:
        self.passthrough = passthrough
        self.calls: list[str] = []
        self.delay = delay
        self.instances: dict[str, Any] = {}

    def call(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: RequestContext) -> Any:
        self.calls.append(step.name)
        return self._run(step, args, kwargs)

    async def _run(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        spec = self.plan.deployment(step.deployment)
        if self.delay:
            await asyncio.sleep(self.delay)
        if spec.kind == "model":
            inst = self.instances.setdefault(spec.name, spec.target(*spec.init_args, **spec.init_kwargs))
            fn = getattr(inst, step.method)
        else:
            fn = spec.target
        if spec.batched:
            return (await fn([args[0]]))[0]
        out = fn(*args, **kwargs)
        return await out if asyncio.iscoroutine(out) else out


def make(graph: dagserve.Graph, **kw: Any) -> tuple[Executor, RecordingRunner]:
    plan = dagserve.compile(graph)
    runner = RecordingRunner(**kw)
    runner.plan = plan  # type: ignore[attr-defined]
    return Executor(plan, runner), runner


async def test_chain_runs_in_order() -> None:
    ex, runner = make(eg.chain())
    assert await ex.run(4) == {"y": 15}
    assert runner.calls == ["pre", "Scale", "post"]


async def test_straight_line_plans_run_step_by_step_with_the_same_bookkeeping() -> None:
    ex, runner = make(eg.chain())
    assert ex._line is not None and [s.name for s in ex._line] == ["pre", "Scale", "post"]
    ctx = RequestContext()
    assert await ex.run(4, ctx) == {"y": 15}
    assert runner.calls == ["pre", "Scale", "post"]
    assert list(ctx.timings) == ["pre", "Scale", "post"] and not ctx.running
    with dagserve.Input() as inp:
        ex, _ = make(dagserve.Graph(eg.post(inp["x"]), name="line_with_select"))
    assert ex._line is not None
    assert await ex.run({"x": 1}) == {"y": 1}
    with pytest.raises(RequestError, match=r"The payload has no 'x'"):
        await ex.run({"y": 1})
    # Anything with a step reading several others, routing, a structured output or pass-through
    # results takes the general path.
    for graph in (eg.fan_out(), eg.switched(), eg.split(), eg.structured(), eg.shared_once()):
        assert make(graph)[0]._line is None
    assert make(eg.chain(), passthrough=True)[0]._line is None


async def test_structured_output_and_schema() -> None:
    ex, _ = make(eg.structured())
    out = await ex.run({"x": 1})
    assert out == {"scaled": 20, "offset": 12, "pair": (2, [1, 7])}


async def test_schema_failure_lists_field_errors_before_any_node_runs() -> None:
    ex, runner = make(eg.structured())
    with pytest.raises(InputValidationError, match=r"does not match Req: 1 error\(s\) at x") as info:
        await ex.run({"x": "not a number"})
    assert info.value.errors[0]["loc"] == ["x"] and info.value.status_code == 422
    assert runner.calls == []


async def test_switch_runs_only_the_chosen_branch() -> None:
    ex, runner = make(eg.switched())
    assert await ex.run({"x": 5, "route": "b"}) == 6
    assert runner.calls == ["pre", "counted#2"]
    runner.calls.clear()
    assert await ex.run({"x": 5, "route": "zzz"}) == 5
    assert runner.calls == ["counted#3"]


async def test_switch_without_default_raises_no_route() -> None:
    with dagserve.Input() as inp:
        g = dagserve.Graph(dagserve.switch(inp["k"], {"a": eg.pre(inp["x"])}), name="nodefault")
    ex, runner = make(g)
    with pytest.raises(NoRouteError, match=r"Switch 'switch' got 'b' which matches none of its cases \['a'\] and it has no default"):
        await ex.run({"k": "b", "x": 1})
    assert runner.calls == []


async def test_shared_node_runs_once() -> None:
    ex, runner = make(eg.shared_once())
    assert await ex.run(3) == [4, 6, 3]
    assert runner.calls.count("counted") == 1


async def test_independent_branches_run_concurrently() -> None:
    ex, _ = make(eg.overlapping(0.3))
    assert eg.overlapped(await ex.run({"x": 1}))


async def test_node_error_names_the_node_and_chains_the_cause() -> None:
    ex, runner = make(eg.failing())
    with pytest.raises(NodeError, match=r"Node 'fail' raised ValueError: bad value 2") as info:
        await ex.run(1)
    assert info.value.node == "fail" and info.value.error_type == "ValueError"
    assert isinstance(info.value.__cause__, ValueError)
    assert runner.calls == ["pre", "fail"]  # post never ran


async def test_failure_cancels_sibling_branches() -> None:
    with dagserve.Input() as inp:
        g = dagserve.Graph([eg.fail(inp), eg.slow(inp, 5.0)], name="siblings")
    ex, _ = make(g)
    t = asyncio.get_running_loop().time()
    with pytest.raises(NodeError, match="'fail'"):
        await ex.run(1)
    assert asyncio.get_running_loop().time() - t < 4  # ordering: before the 5 s sibling would have ended
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_missing_payload_field_is_a_request_error() -> None:
    ex, _ = make(eg.fan_out())
    with pytest.raises(RequestError, match=r"The payload has no 'x' \(needed by \"input\['x'\]\"\); send it in the request body"):
        await ex.run({"y": 1})
    with pytest.raises(RequestError, match="The payload is a int"):
        await ex.run(5)


async def test_selection_failure_on_a_node_output_is_a_node_error() -> None:
    with dagserve.Input() as inp:
        g = dagserve.Graph(eg.post(inp)["missing"], name="sel")
    ex, _ = make(g)
    with pytest.raises(NodeError, match=r"Selecting 'missing' from the output of 'post' failed: KeyError"):
        await ex.run(1)


async def test_node_timeout() -> None:
    slow = eg.slow.options(timeout_s=0.05, name="slowpoke")
    with dagserve.Input() as inp:
        g = dagserve.Graph(slow(inp, 1.0), name="t")
    ex, _ = make(g)
    with pytest.raises(RequestTimeoutError, match=r"Node 'slowpoke' did not answer within its timeout_s=0\.05") as info:
        await ex.run(1)
    assert info.value.node == "slowpoke" and info.value.status_code == 504


async def test_split_weights_hold_over_many_calls() -> None:
    ex, _ = make(eg.split())
    ctx_routes = []
    for i in range(2000):
        ctx = RequestContext()
        await ex.run({"x": i}, ctx)
        ctx_routes.append(ctx.route["split"])
    canary = ctx_routes.count("canary") / 2000
    # 10% expected; binomial sd = sqrt(.1*.9/2000) = 0.0067, so +-0.03 is over 4 sd.
    assert 0.07 < canary < 0.13


async def test_sticky_split_by_key() -> None:
    ex, _ = make(eg.split(key=True))
    routes: dict[str, set[str]] = {}
    for i in range(600):
        user = f"user{i % 60}"
        ctx = RequestContext()
        await ex.run({"x": 1, "user": user}, ctx)
        routes.setdefault(user, set()).add(ctx.route["split"])
    assert all(len(r) == 1 for r in routes.values())  # each user always sees one branch
    assert {next(iter(r)) for r in routes.values()} == {"stable", "canary"}


async def routes(ex: Executor, payloads: list[dict[str, Any]]) -> list[str]:
    out = []
    for payload in payloads:
        ctx = RequestContext()
        await ex.run(payload, ctx)
        out.append(ctx.route["split"])
    return out


async def test_seeded_split_repeats_its_sequence_in_every_executor() -> None:
    payloads = [{"x": i} for i in range(200)]
    first = await routes(make(eg.split(seed=7))[0], payloads)
    assert await routes(make(eg.split(seed=7))[0], payloads) == first
    assert await routes(make(eg.split(seed=8))[0], payloads) != first
    assert await routes(make(eg.split())[0], payloads) != first  # unseeded: random (equal: 1 in ~1e14)
    assert 5 <= first.count("canary") <= 40  # still weighted 90/10
    # A plan change (App.scale/update) makes a new executor: the sequence goes on, not over.
    ex = make(eg.split(seed=7))[0]
    head = await routes(ex, payloads[:100])
    tail = await routes(Executor(ex.plan, ex.runner, previous=ex), payloads[100:])
    assert head + tail == first


async def test_seed_salts_a_keyed_split() -> None:
    payloads = [{"x": 1, "user": f"user{i}"} for i in range(200)]
    plain = await routes(make(eg.split(key=True))[0], payloads)
    seven = await routes(make(eg.split(key=True, seed=7))[0], payloads)
    assert await routes(make(eg.split(key=True, seed=7))[0], payloads[::-1]) == seven[::-1]  # sticky
    assert seven != plain  # another seed, other buckets
    assert await routes(make(eg.split(key=True))[0], payloads) == plain  # unseeded keys keep their branch


async def test_passthrough_hands_pending_results_to_the_next_call() -> None:
    ex, runner = make(eg.chain(), passthrough=True)
    seen: list[Any] = []
    original = runner._run

    async def spy(step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seen.append(args[0])
        resolved = tuple([await a if asyncio.iscoroutine(a) else a for a in args])
        return await original(step, resolved, kwargs)

    runner._run = spy  # type: ignore[method-assign]
    assert await ex.run(4) == {"y": 15}
    # Scale and post received their upstream's un-awaited result; only pre saw a plain value.
    assert len(seen) == 3 and seen.count(4) == 1
    assert sum(asyncio.iscoroutine(a) for a in seen) == 2


def test_select_and_validate_helpers() -> None:
    assert select({"a": 1}, "a") == 1 and select([1, 2], 1) == 2
    req = eg.Req(x=3)
    assert select(req, "x") == 3
    assert validate_payload(None, {"any": 1}) == {"any": 1}
    assert validate_payload(eg.Req, req) is req


def test_unknown_fields_are_refused_but_aliases_are_fields() -> None:
    from pydantic import AliasChoices, BaseModel, Field

    class Aliased(BaseModel):
        kind: str = Field("a", alias="type")
        size: int = Field(1, validation_alias=AliasChoices("size", "n"))

    assert validate_payload(Aliased, {"type": "b", "n": 3}).size == 3
    with pytest.raises(InputValidationError, match=r"unknown field\(s\) 'nn'; the fields are: kind, size") as info:
        validate_payload(Aliased, {"type": "b", "nn": 3})
    assert info.value.errors == [{"loc": ["nn"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}]


async def test_a_reader_cancelled_by_its_siblings_failure_leaves_a_shared_step_to_its_other_readers() -> None:
    """b(z, a) and z are both outputs; a times out while z runs. Cancelling b's wait for z must not
    cancel z itself for the output's own read of it: the request fails with a's timeout, never with
    a bare CancelledError."""
    late = eg.slow.options(name="late")
    timed = eg.slow.options(name="timed", timeout_s=0.05)
    with dagserve.Input() as inp:
        z = late(inp, 0.3)
        g = dagserve.Graph([eg.combine([z, timed(inp, 5.0)]), z], name="shared_cancel")
    ex, _ = make(g)
    with pytest.raises(RequestTimeoutError, match="'timed'"):
        await ex.run(1)
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


def test_a_call_result_a_stream_reads_is_never_handed_on_unawaited() -> None:
    """On Ray a stream's call awaits its arguments itself: a result it reads cannot also travel
    un-awaited to another call (the same response object, awaited here, no longer pickles)."""

    @dagserve.node
    def question(x: int) -> int:
        return x

    @dagserve.node
    def search(q: int) -> int:
        return q

    @dagserve.node
    async def tokens(q: int, found: int) -> Any:
        yield q + found

    with dagserve.Input() as inp:
        q = question(inp)
        graph = dagserve.Graph(tokens(q, search(q)), name="stream_reads_a_call")
    ex, _ = make(graph, passthrough=True)
    plan = dagserve.compile(graph)
    assert not ex._pass[plan.step("question").index]
