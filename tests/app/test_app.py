"""dagserve.deploy and App: calling from sync and async code, deadlines, scale/update errors."""

from __future__ import annotations

import asyncio
import threading

import pytest

import dagserve
from dagserve import AppClosedError, DagserveError, GraphError, NodeNotFoundError, OptionsError, RequestTimeoutError

from .. import example_graphs as eg


def test_call_and_acall_from_sync_and_async_code() -> None:
    with dagserve.deploy(eg.chain(), backend="local") as app:
        assert app.call(1) == {"y": 6}

        async def inside() -> object:
            with pytest.raises(DagserveError, match=r"App\.call blocks and cannot run inside an event loop; use `await app\.acall"):
                app.call(1)
            return await app.acall(2)

        # A different loop than the App's home loop: the request hops onto the home loop.
        assert asyncio.run(inside()) == {"y": 9}


def test_acall_binds_to_the_first_loop_and_survives_it_closing() -> None:
    app = dagserve.deploy(eg.batched(), backend="local")
    try:
        assert asyncio.run(app.acall(1)) == 1
        assert asyncio.run(app.acall(1)) == 1  # the first loop is closed; a new one takes over
        assert app.call(1) == 1
    finally:
        app.shutdown()


def test_calls_from_many_threads() -> None:
    results: list[object] = []
    with dagserve.deploy(eg.chain(), backend="local") as app:
        threads = [threading.Thread(target=lambda i=i: results.append(app.call(i))) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert sorted(r["y"] for r in results) == sorted((i + 1) * 3 for i in range(8))  # type: ignore[index]


def test_request_deadline_names_the_running_node() -> None:
    with dagserve.Input() as inp:
        g = dagserve.Graph(eg.post(eg.slow(inp, 2.0)), name="deadline")
    with dagserve.deploy(g, backend="local", request_timeout_s=0.1) as app:
        with pytest.raises(RequestTimeoutError, match=r"did not finish within 0\.1 s; still running: slow") as info:
            app.call(1)
        assert info.value.node == "slow" and info.value.status_code == 504


def test_per_call_timeout_overrides_the_default() -> None:
    with dagserve.Input() as inp:
        g = dagserve.Graph(eg.slow(inp, 0.2), name="override")
    with dagserve.deploy(g, backend="local", request_timeout_s=0.05) as app:
        assert app.call(3, timeout_s=5) == 3
        with pytest.raises(RequestTimeoutError):
            app.call(3)


def test_context_receives_timings_and_routes() -> None:
    ctx = dagserve.RequestContext(request_id="abc")
    with dagserve.deploy(eg.switched(), backend="local") as app:
        assert asyncio.run(app.acall({"x": 1, "route": "b"}, context=ctx)) == 2
    assert ctx.request_id == "abc"
    assert set(ctx.timings) == {"pre", "counted#2"}
    assert ctx.route == {"switch": "'b'"}


def test_observers_see_every_request() -> None:
    seen: list[tuple[str, object]] = []
    with dagserve.deploy(eg.failing(), backend="local") as app:
        app.observers.append(lambda a, ctx, err, s: seen.append((a.name, type(err).__name__ if err else None)))
        with pytest.raises(dagserve.NodeError):
            app.call(1)
    assert seen == [("failing", "NodeError")]


def test_closed_app_refuses_work() -> None:
    app = dagserve.deploy(eg.chain(), backend="local")
    app.shutdown()
    app.shutdown()  # idempotent
    assert app.closed and "closed" in repr(app)
    with pytest.raises(AppClosedError, match=r"App 'chain' was shut down; deploy the graph again"):
        app.call(1)
    with pytest.raises(AppClosedError):
        app.status()


def test_scale_errors() -> None:
    inline_pre = eg.pre.options(inline=True)
    with dagserve.Input() as inp:
        g = dagserve.Graph(eg.post(inline_pre(inp)), name="scaling")
    with dagserve.deploy(g, backend="local") as app:
        with pytest.raises(OptionsError, match=r"App\.scale needs num_replicas=N or autoscaling"):
            app.scale("post")
        with pytest.raises(OptionsError, match=r"App\.scale changes replicas only \(num_replicas, autoscaling\), not max_batch_size"):
            app.scale("post", max_batch_size=3)
        with pytest.raises(OptionsError, match=r"Node 'pre' runs inline in the ingress process and has no replicas"):
            app.scale("pre", num_replicas=2)
        with pytest.raises(NodeNotFoundError, match=r"Graph 'scaling' has no node 'missing'; its nodes are: 'pre', 'post'"):
            app.scale("missing", num_replicas=2)
        with pytest.raises(OptionsError, match=r"Invalid option num_replicas=0 for node 'post'"):
            app.scale("post", num_replicas=0)
        app.scale(eg.post, num_replicas=2)  # by object
        assert app.status().nodes["post"].running_replicas == 2


def test_update_errors() -> None:
    class NoOffset:
        def __call__(self, x: int) -> int:
            return x

    with dagserve.Input() as inp:
        s = eg.Scale(2)
        g = dagserve.Graph([s(inp), s.offset(inp), eg.pre(inp)], name="upd")
    with dagserve.deploy(g, backend="local") as app:
        with pytest.raises(OptionsError, match=r"App\.update cannot change inline on a running node"):
            app.update("pre", inline=True)
        with pytest.raises(OptionsError, match=r"NoOffset cannot replace node 'Scale': it lacks the method\(s\) offset"):
            app.update(s, implementation=NoOffset)
        with pytest.raises(OptionsError, match=r"Node 'pre' is a function node; it has no constructor arguments"):
            app.update("pre", init_args=(1,))
        with pytest.raises(OptionsError, match=r"Scale cannot be constructed with these arguments"):
            app.update(s, init_args=(1, 2, 3))
        app.update("pre", implementation=lambda x: x - 1)
        assert app.call(5) == [10, 7, 4]


def test_deploy_rejects_non_graphs_and_unknown_backends() -> None:
    with pytest.raises(GraphError, match="dagserve.deploy takes a dagserve.Graph, got function"):
        dagserve.deploy(eg.pre.fn)  # type: ignore[arg-type]
    with pytest.raises(DagserveError, match=r"Unknown backend 'spark'; use 'local' \(in-process\) or 'ray'"):
        dagserve.deploy(eg.chain(), backend="spark")
