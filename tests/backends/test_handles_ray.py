"""Issue 18 on a real local Ray (one for the module): handles (items 1), one model shared by
several graphs (item 5), graphs inside graphs (item 10). Their logic is tested on the local
backend (tests/runtime/test_handles.py ...); here, what differs on Ray: handle calls from inside
Serve replicas, batching of calls arriving through handles under load, one set of replicas."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import dagserve
from dagserve import HandleError, NodeError, RequestTimeoutError
from dagserve.backends.ray.cluster import start_local_ray

from .. import handle_graphs as hg

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    import ray
    from ray import serve

    start_local_ray(num_cpus=2)
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


def test_handles_from_serve_replicas(ray_session: None) -> None:
    with dagserve.deploy(hg.fan_out_graph(), backend="ray") as app:
        out = app.call({"n": 3}, request_id="rid-ray")
        # Async and sync node code in replicas, handles in lists/dicts and as a call argument;
        # the request id reaches the callee through two hops.
        assert out["fan"] == {"labels": ["c0", "c1", "c2"], "doubled": 6, "remote": 2, "rid": "rid-ray"}
        assert out["sync"] == {"label": "c3", "doubled": 6, "remote": 8, "rid": "rid-ray"}
        assert out["arg"] == 7
        # The callees are deployments of their own, with replicas of their own.
        status = app.status()
        assert {"Classifier", "Tools"} <= set(status.nodes) and status.nodes["Classifier"].running_replicas == 1
    # Inline nodes (run in this process) holding handles call the remote nodes through the runner.
    tools = hg.Tools()
    with dagserve.Input() as inp:
        inline = {
            "arg": hg.use_handle.options(inline=True, name="inline_arg")(inp, tools),
            "held": hg.SyncUser.options(inline=True)([hg.Classifier(), tools])(inp),
        }
    with dagserve.deploy(dagserve.Graph(inline, name="inline_holders"), backend="ray") as app:
        assert app.call(2, request_id="rid-inline") == {
            "arg": 5, "held": {"label": "c2", "doubled": 4, "remote": 6, "rid": "rid-inline"}
        }
        assert app.backend.transport("Tools") != "inline"
    # timeout_s 5: generous for a loaded machine's first call through a fresh Serve handle.
    with dagserve.deploy(hg.retry_graph(timeout_s=5), backend="ray") as app:
        assert app.call({"x": 2}) == {"node": "Tools.fail", "error": "ValueError"}
        with pytest.raises(RequestTimeoutError, match=r"Node 'Tools.slow' did not answer within its timeout_s=5"):
            app.call({"slow": 30})
        # The request's deadline travels with the calls, ingress -> Retrier -> Tools.
        assert 20 < app.call({"time_left": True}, timeout_s=30) <= 30
    with dagserve.Input() as inp:
        g = dagserve.Graph(hg.OnLoop(hg.Tools())(inp), name="on_loop")
    with dagserve.deploy(g, backend="ray") as app, pytest.raises((HandleError, NodeError), match=r"blocks, and this code runs on an event loop's thread"):
        app.call(1, timeout_s=30)


def test_batching_through_handles_under_load(ray_session: None) -> None:
    with dagserve.deploy(hg.batch_graph(), backend="ray") as app:
        results = list(app.map([{"n": 6}] * 24, concurrency=12))
        assert all(r["labels"] == [f"c{i}" for i in range(6)] for r in results)
        sizes = app.backend.batch_sizes()["Classifier"]
        assert sum(size * n for size, n in sizes.items()) == 24 * 6
        assert max(sizes) > 1, sizes


def test_graphs_deployed_together_share_one_set_of_replicas_and_nested_graphs_run(ray_session: None) -> None:
    ga, gb, counter = hg.shared_graphs()
    with dagserve.deploy([ga, gb], backend="ray") as app:
        # One Counter deployment, one replica: its state runs on across both graphs.
        assert app.call(1, graph="ga") == {"a": 1}
        assert app.call({"x": 2}, graph="gb") == {"b": 2}
        assert app.call(3, graph="ga") == {"a": 3}
        assert set(app.status().nodes) == {"Counter"} and len(app.backend.replicas("Counter")) == 1
    review = hg.review_graph(counter)
    with dagserve.Input() as inp:
        outer = dagserve.Graph({"p": hg.post(review(inp["review"])), "c": counter(inp)}, name="outer")
    with dagserve.deploy(outer, backend="ray") as app:
        assert app.call({"review": {"text": "good"}}) == {"p": {"post": {"score": 1.0, "n": 2}}, "c": 1}
        with pytest.raises(NodeError, match=r"Node 'review/sentiment' raised ValueError: boom"):
            app.call({"review": {"text": "boom"}})
