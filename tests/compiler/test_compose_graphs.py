"""Issue 18 items 5 and 10 at compile time: graphs sharing deployments, graphs inside graphs."""

from __future__ import annotations

import pytest

import dagserve
from dagserve import CompileError, GraphError
from dagserve.compiler.handle_refs import HandleRef
from dagserve.compiler.shared import share_deployments

from .. import handle_graphs as hg
from ..handle_graphs import post, review_graph


def test_a_graph_called_inside_another_joins_its_plan_with_named_steps_and_one_deployment_per_instance() -> None:
    counter = hg.Counter()
    review = review_graph(counter)
    with dagserve.Input() as inp:
        outer = dagserve.Graph({"p": post(review(inp["review"])), "c": counter(inp)}, name="outer")
    plan = dagserve.compile(outer)
    assert [s.name for s in plan.steps] == [
        "input", "input['review']", "review/input['review']['text']", "review/sentiment", "review/Counter", "post", "Counter"
    ]
    assert [d.name for d in plan.deployments] == ["sentiment", "Counter", "post"]  # Counter: one deployment
    assert plan.groups == (("review", ("review/input['review']['text']", "review/sentiment", "review/Counter")),)
    # The inner graph still compiles and runs on its own.
    assert [s.name for s in dagserve.compile(review).steps][-1] == "Counter"
    # Deeper: the path of graphs names the step.
    with dagserve.Input() as mid_in:
        mid = dagserve.Graph(review(mid_in), name="mid")
    with dagserve.Input() as top_in:
        top = dagserve.Graph(mid(top_in), name="top")
    assert "mid/review/sentiment" in [s.name for s in dagserve.compile(top).steps]


def test_calling_a_graph_takes_one_node() -> None:
    review = review_graph(hg.Counter())
    with dagserve.Input() as inp:
        with pytest.raises(GraphError, match=r"Graph 'review' is called with one argument, its payload"):
            review(inp, inp)
        with pytest.raises(GraphError, match=r"Graph 'review' got \{'text': 'x'\} as its payload; call it with a node"):
            review({"text": "x"})


def test_share_deployments_merges_by_instance_and_renames_clashes() -> None:
    ga, gb, counter = hg.shared_graphs()
    other = hg.Counter()  # another instance with the same name: a deployment of its own

    with dagserve.Input() as c:
        gc = dagserve.Graph(hg.FanOut(hg.Classifier(), {"t": hg.Tools()})(other(c)), name="gc")
    whole, plans = share_deployments([dagserve.compile(g) for g in (ga, gb, gc)])
    assert whole.graph_name == "ga+gb+gc" and whole.steps == ()
    assert [d.name for d in whole.deployments] == ["Counter", "Counter_2", "FanOut", "Classifier", "Tools"]
    assert plans[0].deployments[0] is plans[1].deployments[0]  # one spec for the shared instance
    assert plans[2].step("Counter").deployment == "Counter_2"
    assert whole.deployment("FanOut").init_args[0] == HandleRef("Classifier", bounds=(64, None))
    with pytest.raises(CompileError, match=r"Several graphs are named 'ga'"):
        share_deployments([dagserve.compile(ga), dagserve.compile(ga)])
