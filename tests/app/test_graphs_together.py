"""Issue 18 items 5 and 10 on the local backend: several graphs as one App, graphs in graphs."""

from __future__ import annotations

import asyncio

import pytest

import dagserve
from dagserve import GraphError, NodeError, NodeNotFoundError

from .. import handle_graphs as hg
from ..background_server import BackgroundServer
from ..handle_graphs import post, review_graph


def test_several_graphs_one_app_share_one_deployment_and_its_state() -> None:
    ga, gb, counter = hg.shared_graphs()
    with dagserve.deploy([ga, gb], backend="local") as app:
        assert list(app.graphs) == ["ga", "gb"] and app.name == "ga+gb"
        # One Counter replica for both graphs: the count runs on across them.
        assert app.call(1, graph="ga") == {"a": 1}
        assert app.call({"x": 2}, graph="gb") == {"b": 2}
        assert asyncio.run(app.acall(3, graph="ga")) == {"a": 3}
        assert app.graphs["gb"].call({"x": 0}) == {"b": 4}
        assert set(app.status().nodes) == {"Counter"}
        with pytest.raises(NodeNotFoundError, match=r"This App has no graph None; pass graph= one of 'ga', 'gb'"):
            app.call(1)
        app.update(counter, num_replicas=2)  # changes the one deployment, for both graphs
        assert app.graphs["ga"].plan.deployment("Counter").options.num_replicas == 2
    assert app.graphs["ga"].closed
    with pytest.raises(GraphError, match=r"takes a list of dagserve.Graph objects, got \['int'\]"):
        dagserve.deploy([ga, 1], backend="local")  # type: ignore[list-item]


@pytest.mark.http
def test_several_graphs_served_over_asgi_by_name() -> None:
    import httpx

    ga, gb, _ = hg.shared_graphs()
    with dagserve.deploy([ga, gb], backend="local") as app, BackgroundServer(app.asgi()) as url:
        assert httpx.post(f"{url}ga", json=5).json() == {"a": 1}
        assert httpx.post(f"{url}gb", json={"x": 1}).json() == {"b": 2}


@pytest.mark.http
def test_asgi_app_of_an_app_of_several_graphs_routes_each_by_name() -> None:
    import httpx

    ga, gb, _ = hg.shared_graphs()
    with dagserve.deploy([ga, gb], backend="local") as app, BackgroundServer(dagserve.asgi_app(app)) as url:
        assert httpx.post(f"{url}ga", json=5).json() == {"a": 1}
        assert httpx.post(f"{url}gb", json={"x": 1}).json() == {"b": 2}  # one Counter for both
        assert [g["name"] for g in httpx.get(url).json()["graphs"]] == ["ga", "gb"]


def test_graph_inside_graph_runs_and_errors_name_the_inner_graph() -> None:
    counter = hg.Counter()
    review = review_graph(counter)
    with dagserve.Input() as inp:
        outer = dagserve.Graph({"p": post(review(inp["review"])), "c": counter(inp)}, name="outer")
    with dagserve.deploy(outer, backend="local") as app:
        out = app.call({"review": {"text": "good"}})  # one Counter, called inside and outside review
        assert out["p"]["post"]["score"] == 1.0 and sorted([out["p"]["post"]["n"], out["c"]]) == [1, 2]
        with pytest.raises(NodeError, match=r"Node 'review/sentiment' raised ValueError: boom") as info:
            app.call({"review": {"text": "boom"}})
        assert info.value.node == "review/sentiment"


def test_handles_keep_their_targets_when_graphs_together_rename_deployments() -> None:
    # Each graph has its own Tools instance, named "Tools" in its own plan: together they are
    # Tools and Tools_2, and each graph's handles still reach its own instance.
    with dagserve.deploy([hg.fan_out_graph(), hg.retry_graph()], backend="local") as app:
        names = [d.name for d in app.plan.deployments]
        assert names == ["FanOut", "SyncUser", "use_handle", "Classifier", "Tools", "Retrier", "Tools_2"]
        assert app.plan.deployment("Retrier").init_args[0].deployment == "Tools_2"
        assert app.call({"x": 1}, graph="retry") == {"node": "Tools_2.fail", "error": "ValueError"}
        assert app.call({"n": 1}, graph="fan_out")["arg"] == 3


def test_graphs_together_refuse_ingress_replicas_before_starting_anything() -> None:
    from dagserve.backends.ray.backend import RayBackend

    ga, gb, _ = hg.shared_graphs()
    with pytest.raises(dagserve.DeployError, match=r"ingress_replicas=N serves one graph"):
        dagserve.deploy([ga, gb], RayBackend(ingress_replicas=1))
