"""Handles on the local backend (issue 18 item 1): calls from node code to other deployments."""

from __future__ import annotations

import asyncio

import pytest

import dagserve
from dagserve import CompileError, GraphError, HandleError, RequestTimeoutError
from dagserve.compiler.handle_refs import HandleRef
from dagserve.observe.metrics import Metrics, instrument

from .. import handle_checks as hc
from .. import handle_graphs as hg


def test_handles_compile_to_deployments_refs_and_calls_edges() -> None:
    plan = dagserve.compile(hg.fan_out_graph())
    names = [d.name for d in plan.deployments]
    # Classifier and Tools are handle-only: no step calls them, yet each is a deployment.
    assert names == ["FanOut", "SyncUser", "use_handle", "Classifier", "Tools"]
    assert all(s.deployment not in ("Classifier", "Tools") for s in plan.steps)
    assert plan.calls == (("FanOut", "Classifier"), ("FanOut", "Tools"), ("SyncUser", "Classifier"),
                          ("SyncUser", "Tools"), ("use_handle", "Tools"))
    fan = plan.deployment("FanOut")
    # A ref carries what a caller in another process needs: the callee's timeout_s, and its
    # (max_ongoing, max_queued) per replica while its replica count is fixed (it may go direct).
    classifier = HandleRef("Classifier", bounds=(64, None))  # batched: max_ongoing >= 2 x max_batch_size
    tools = HandleRef("Tools", bounds=(100, None))
    assert fan.init_args == (classifier, {"t": tools})
    assert plan.step("use_handle").args[1] == tools
    autoscaled = dagserve.compile(hg.fan_out_graph(tools=hg.Tools().options(autoscaling={"max_replicas": 2})))
    assert autoscaled.step("use_handle").args[1] == HandleRef("Tools", bounds=None)  # Serve routes its calls
    # A deployment reached through handles may be called on any of its public methods.
    assert set(plan.deployment("Tools").methods) == {"double", "request_id", "time_left", "fail", "slow"}
    assert plan.deployment("Tools").async_methods == frozenset({"request_id", "time_left", "slow"})
    # A batched callee batches the methods that take one list; the others are called as they are.
    assert plan.deployment("Classifier").methods == ("__call__",)
    assert plan.deployment("Classifier").async_methods == frozenset({"__call__", "seen"})


@dagserve.node
class AskSeen:
    def __init__(self, classifier: object) -> None:
        self.classifier = classifier

    async def __call__(self, x: int) -> list[object]:
        return [await self.classifier.acall(x), await self.classifier.seen.acall()]  # type: ignore[attr-defined]


def test_a_batched_callee_s_other_methods_are_called_unbatched() -> None:
    with dagserve.Input() as inp:
        g = dagserve.Graph(AskSeen(hg.Classifier())(inp), name="seen")
    with dagserve.deploy(g, backend="local") as app:
        assert app.call(4) == ["c4", 1]


def test_handle_calls_async_sync_remote_and_as_call_argument() -> None:
    with dagserve.deploy(hg.fan_out_graph(), backend="local") as app:
        out = app.call({"n": 3}, request_id="rid-1")
        assert out["fan"] == {"labels": ["c0", "c1", "c2"], "doubled": 6, "remote": 2, "rid": "rid-1"}
        assert out["sync"] == {"label": "c3", "doubled": 6, "remote": 8, "rid": "rid-1"}
        assert out["arg"] == 7
        assert set(app.status().nodes) == {"FanOut", "SyncUser", "use_handle", "Classifier", "Tools"}
        ctx = dagserve.RequestContext()
        asyncio.run(app.acall({"n": 2}, context=ctx))
        # Handle calls are timed under the callee's name, apart from the graph's own steps, and
        # shown with them (Server-Timing, access records).
        assert {"Classifier", "Tools.double", "Tools.request_id"} <= set(ctx.handle_timings or {})
        assert not {"Classifier", "Tools.double"} & set(ctx.timings)
        assert set(ctx.timings) | set(ctx.handle_timings or {}) == set(ctx.shown_timings())


def test_callee_batches_calls_arriving_through_handles() -> None:
    with dagserve.deploy(hg.batch_graph(), backend="local") as app:
        results = list(app.map([{"n": 6}] * 8, concurrency=8))
        assert all(r["labels"] == [f"c{i}" for i in range(6)] for r in results)
        sizes = app.backend.batch_sizes()["Classifier"]
        assert sum(size * n for size, n in sizes.items()) == 48
        assert max(sizes) > 1  # concurrent handle calls formed batches


def test_blocking_call_on_the_loop_thread_raises_instead_of_deadlocking() -> None:
    with dagserve.Input() as inp:
        g = dagserve.Graph(hg.OnLoop(hg.Tools())(inp), name="on_loop")
    with dagserve.deploy(g, backend="local") as app, pytest.raises(HandleError, match=r"handle Tools.double.call\(\) blocks, and this code runs on an event loop's thread.*await handle.acall"):
        app.call(1, timeout_s=10)


def test_callee_errors_timeouts_and_the_request_deadline_travel_through_handles() -> None:
    with dagserve.deploy(hg.retry_graph(), backend="local") as app:
        # The callee's failure names it; the caller caught it and retried/answered.
        assert app.call({"x": 1}) == {"node": "Tools.fail", "error": "ValueError"}
        # The callee keeps its own timeout_s (0.5 s) ...
        with pytest.raises(RequestTimeoutError, match=r"Node 'Tools.slow' did not answer within its timeout_s=0.5"):
            app.call({"slow": 5})
        # ... and the request's deadline travels to the callee and bounds the handle call.
        left = app.call({"time_left": True}, timeout_s=30)
        assert 20 < left <= 30
        with pytest.raises(RequestTimeoutError) as info:
            app.call({"slow": 0.4}, timeout_s=0.1)
        assert info.value.node in ("Tools.slow", "Retrier")


def test_a_callee_s_timeout_changed_by_update_reaches_the_handles_that_exist() -> None:
    with dagserve.deploy(hg.retry_graph(timeout_s=0.5), backend="local") as app:
        app.call({"x": 1})  # the Retrier's handle exists now
        app.update("Tools", timeout_s=5.0)
        assert app.call({"slow": 1}) == 1  # within the new 5 s, not the old 0.5 s
        app.update("Tools", timeout_s=0.2)
        with pytest.raises(RequestTimeoutError, match=r"Node 'Tools.slow' did not answer within its timeout_s=0.2"):
            app.call({"slow": 3})


def test_a_cycle_of_handles_is_a_compile_error() -> None:
    @dagserve.node
    def ask(x: int, other: object) -> int:
        return x

    holder = hg.OnLoop(ask)  # OnLoop holds a handle to ask ...
    with dagserve.Input() as inp:
        out = ask(inp, holder)  # ... and ask gets one to OnLoop
    with pytest.raises(CompileError, match=r"Graph 'cyc' has a cycle of handles: (ask -> OnLoop -> ask|OnLoop -> ask -> OnLoop)"):
        dagserve.compile(dagserve.Graph(out, name="cyc"))


def test_a_model_used_only_through_handles_is_not_dead_and_remote_bind_stay_errors() -> None:
    plan = dagserve.compile(hg.batch_graph())  # Classifier and Tools: no output reads them
    assert {"Classifier", "Tools"} <= {d.name for d in plan.deployments}
    tools = hg.Tools()
    with pytest.raises(GraphError, match=r"Model 'Tools' has no method 'remote'"):
        tools.remote(1)
    with pytest.raises(GraphError, match=r"Model 'Tools' has no method 'bind'"):
        tools.bind()


def test_sync_code_holding_or_given_handles_never_runs_inline_on_the_loop() -> None:
    # The sync-call policy (runtime/sync_calls.py) moves fast sync code onto the event loop after
    # a few fast calls; there, handle.call() would have to wait for the loop it blocks. Nodes that
    # hold handles, or are given one, stay on threads however many fast calls they make.
    with dagserve.deploy(hg.fan_out_graph(), backend="local") as app:
        first = app.call({"n": 3}, request_id="same")
        assert first["sync"]["doubled"] == 6 and first["arg"] == 7
        for _ in range(40):  # more than the policy's fast calls needed to go inline
            assert app.call({"n": 3}, request_id="same") == first
        assert [r.host.sync.modes() for r in app.backend._deployments["SyncUser"].replicas] == [{"__call__": "threads"}]
        # Given a handle per call: each such call runs on a thread, so it never proves itself fast.
        assert [r.host.sync.modes() for r in app.backend._deployments["use_handle"].replicas] == [{"__call__": "probing"}]


def test_calls_through_handles_are_node_calls_in_the_metrics() -> None:
    classifier, tools = hg.Classifier(), hg.Tools()
    graphs = [hg.fan_out_graph(classifier, tools), hg.retry_graph(tools=tools)]
    with dagserve.deploy(graphs, backend="local") as group:
        hc.check_calls_through_handles_are_node_calls(group, "Classifier", "Tools")


@dagserve.node
class Doubler:
    async def __call__(self, x: int) -> int:
        return 2 * x


@dagserve.node
class CallsDoubler:
    def __init__(self, doubler: object) -> None:
        self.doubler = doubler

    async def __call__(self, x: int) -> int:
        return int(await self.doubler.acall(x)) + 1  # type: ignore[attr-defined]


def test_a_node_called_by_the_graph_and_through_a_handle_counts_each_call_once() -> None:
    doubler = Doubler()
    with dagserve.Input() as inp:
        g = dagserve.Graph(doubler(CallsDoubler(doubler)(inp)), name="both")
    with dagserve.deploy(g, backend="local") as app:
        metrics = Metrics()
        instrument(app, metrics)
        ctx = dagserve.RequestContext()
        assert asyncio.run(app.acall(3, context=ctx)) == 14
        assert "Doubler" in ctx.timings and "Doubler" in (ctx.handle_timings or {})  # its graph step's own time too
        for x in range(4):
            assert app.call(x) == 2 * (2 * x + 1)
        calls, observed = hc.node_series(metrics)
        # 5 requests: each called Doubler once as the graph's step and once through the handle.
        assert calls[("both", "Doubler", "ok")] == 10 and observed[("both", "Doubler")] == 10
        assert calls[("both", "CallsDoubler", "ok")] == 5
