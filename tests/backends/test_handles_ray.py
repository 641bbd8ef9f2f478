"""Issue 18 on a real local Ray (one for the module, one App of several graphs): handles
(item 1), one model shared by several graphs (item 5), graphs inside graphs (item 10). Their
logic is tested on the local backend (tests/runtime/test_handles.py, tests/app/
test_graphs_together.py); here what differs on Ray: handle calls from inside Serve replicas (and
from inline nodes), batching of calls arriving through handles under load, one set of replicas
for the graphs deployed together."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import dagserve
from dagserve import HandleError, NodeError, RequestTimeoutError
from dagserve.observe.metrics import Metrics, instrument

from .. import handle_checks as hc
from .. import handle_graphs as hg

pytestmark = pytest.mark.ray


def _graphs() -> list[dagserve.Graph]:
    # One Classifier and one Tools for every graph: fewer replicas to start (the test's cost).
    # timeout_s 5: generous for a loaded machine's first call through a fresh Serve handle.
    classifier, tools = hg.Classifier(), hg.Tools().options(timeout_s=5)
    with dagserve.Input() as inp:
        inline = {  # inline nodes (run in this process) holding handles: they call through the runner
            "arg": hg.use_handle.options(inline=True, name="inline_arg")(inp, tools),
            "held": hg.SyncUser.options(inline=True)([classifier, tools])(inp),
        }
    with dagserve.Input() as inp:
        on_loop = dagserve.Graph(hg.OnLoop(tools)(inp), name="on_loop")
    ga, gb, counter = hg.shared_graphs()
    review = hg.review_graph(counter)
    with dagserve.Input() as inp:
        outer = dagserve.Graph({"p": hg.post(review(inp["review"])), "c": counter(inp)}, name="outer")
    return [
        hg.fan_out_graph(classifier, tools),
        dagserve.Graph(inline, name="inline_holders"),
        hg.retry_graph(tools=tools),
        on_loop,
        ga,
        gb,
        outer,
    ]


@pytest.fixture(scope="module")
def app(shared_ray: None) -> Iterator[dagserve.App]:
    # ready_timeout_s: ten replicas start at once; a loaded 2-core machine may need minutes.
    with dagserve.deploy(_graphs(), backend="ray", ready_timeout_s=300) as deployed:
        yield deployed


def _named(app: dagserve.App, graph: str, cls: Any) -> str:
    """The deployment of ``cls`` in ``graph`` (instances of one class get suffixes when together)."""
    return next(d.name for d in app.graphs[graph].plan.deployments if d.target is cls.cls)


def test_handles_from_serve_replicas_and_inline_nodes(app: dagserve.App) -> None:
    out = app.call({"n": 3}, request_id="rid-ray", graph="fan_out")
    # Async and sync node code in replicas, handles in lists/dicts and as a call argument; the
    # request id reaches the callee through two hops.
    assert out["fan"] == {"labels": ["c0", "c1", "c2"], "doubled": 6, "remote": 2, "rid": "rid-ray"}
    assert out["sync"] == {"label": "c3", "doubled": 6, "remote": 8, "rid": "rid-ray"}
    assert out["arg"] == 7
    held = {"label": "c2", "doubled": 4, "remote": 6, "rid": "rid-inline"}
    assert app.call(2, request_id="rid-inline", graph="inline_holders") == {"arg": 5, "held": held}
    # The callees are deployments of their own, with replicas of their own.
    classifier = _named(app, "fan_out", hg.Classifier)
    assert app.status().nodes[classifier].running_replicas == 1
    assert app.backend.transport(_named(app, "inline_holders", hg.Tools)) != "inline"


def test_handle_calls_from_a_replica_take_the_direct_transport(app: dagserve.App) -> None:
    """The holder's replica chooses its transport as the ingress does: its own direct pools once
    they have connected (Serve's handles until then)."""
    import asyncio
    import time

    from ray.serve.handle import DeploymentHandle

    holder = _named(app, "fan_out", hg.FanOut)
    callees = {_named(app, "fan_out", hg.Classifier), _named(app, "fan_out", hg.Tools)}

    async def info() -> dict[str, Any]:
        replica = DeploymentHandle(holder, app.backend._app_name)  # its router on this loop
        return await replica.dagserve_replica_info.remote()  # type: ignore[no-any-return]

    peers: dict[str, Any] = {}
    for _ in range(60):  # the first calls open the pools, which connect in the background
        assert app.call({"n": 2}, graph="fan_out")["fan"]["labels"] == ["c0", "c1"]
        peers = asyncio.run(info())["direct_peers"]
        if callees <= set(peers):
            break
        time.sleep(0.5)
    assert {name: peers.get(name) for name in callees} == {name: {"local socket": 1} for name in callees}
    # Through the direct transport, the results, errors and request ids are those through Serve.
    out = app.call({"n": 3}, request_id="rid-direct", graph="fan_out")
    assert out["fan"] == {"labels": ["c0", "c1", "c2"], "doubled": 6, "remote": 2, "rid": "rid-direct"}


def test_callee_errors_timeout_and_deadline_through_handles(app: dagserve.App) -> None:
    tools = _named(app, "retry", hg.Tools)
    assert app.call({"x": 2}, graph="retry") == {"node": f"{tools}.fail", "error": "ValueError"}
    with pytest.raises(RequestTimeoutError, match=rf"Node '{tools}.slow' did not answer within its timeout_s=5"):
        app.call({"slow": 30}, graph="retry")
    # The request's deadline travels with the calls, ingress -> Retrier -> Tools.
    assert 20 < app.call({"time_left": True}, timeout_s=30, graph="retry") <= 30
    with pytest.raises((HandleError, NodeError), match=r"blocks, and this code runs on an event loop's thread"):
        app.call(1, timeout_s=30, graph="on_loop")


def test_a_callee_s_timeout_changed_by_update_reaches_the_replicas_holding_handles(app: dagserve.App) -> None:
    """The Retrier's replica started with Tools's timeout_s=5 in its handle; the calls it gets
    bring the timeout_s in force."""
    tools = _named(app, "retry", hg.Tools)
    app.call({"x": 1}, graph="retry")
    try:
        app.update(tools, timeout_s=0.5)
        with pytest.raises(RequestTimeoutError, match=rf"Node '{tools}.slow' did not answer within its timeout_s=0.5"):
            app.call({"slow": 20}, timeout_s=60, graph="retry")
    finally:
        app.update(tools, timeout_s=5.0)
    assert app.call({"slow": 1}, graph="retry") == 1


def test_batching_through_handles_under_load(app: dagserve.App) -> None:
    before = sum(size * n for size, n in app.backend.batch_sizes().get("Classifier", {}).items())
    results = list(app.graphs["fan_out"].map([{"n": 6}] * 24, concurrency=12))
    assert all(r["fan"]["labels"] == [f"c{i}" for i in range(6)] and r["sync"]["label"] == "c6" for r in results)
    sizes = app.backend.batch_sizes()["Classifier"]
    # Every classified crop went through a handle (6 from FanOut, 1 from SyncUser per request) ...
    assert sum(size * n for size, n in sizes.items()) - before == 24 * 7
    assert max(sizes) > 1, sizes  # ... and concurrent handle calls were batched together


def test_graphs_deployed_together_share_replicas_and_nested_graphs_run(app: dagserve.App) -> None:
    # One Counter deployment, one replica, for ga, gb and outer (inside and outside review).
    assert app.call(1, graph="ga") == {"a": 1}
    assert app.call({"x": 2}, graph="gb") == {"b": 2}
    out = app.call({"review": {"text": "good"}}, graph="outer")  # Counter inside and outside review
    assert out["p"]["post"]["score"] == 1.0 and sorted([out["p"]["post"]["n"], out["c"]]) == [3, 4]
    assert len(app.backend.replicas("Counter")) == 1
    assert [d.name for d in app.plan.deployments].count("Counter") == 1
    with pytest.raises(NodeError, match=r"Node 'review/sentiment' raised ValueError: boom"):
        app.call({"review": {"text": "boom"}}, graph="outer")


def test_calls_replicas_make_through_handles_are_node_calls_in_the_metrics(app: dagserve.App) -> None:
    # FanOut's replicas call from their own processes; their figures come with the replicas' STATS.
    hc.check_calls_through_handles_are_node_calls(app, _named(app, "fan_out", hg.Classifier), _named(app, "fan_out", hg.Tools))
    # An inline node holding handles calls from this process: its calls count under its own graph.
    metrics = Metrics()
    instrument(app.graphs["inline_holders"], metrics)
    before, _ = hc.node_series(metrics)
    app.graphs["inline_holders"].call(2)
    after, _ = hc.node_series(metrics)
    classifier = _named(app, "fan_out", hg.Classifier)
    assert after.get(("inline_holders", classifier, "ok"), 0) - before.get(("inline_holders", classifier, "ok"), 0) == 1
