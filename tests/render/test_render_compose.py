"""Diagrams of issue 18's compositions: dashed "calls" edges to deployments called through
handles, and graphs called inside graphs drawn as labelled clusters."""

from __future__ import annotations

import dagserve

from .. import handle_graphs as hg


def test_handles_are_dashed_calls_edges_and_handle_only_deployments_are_drawn() -> None:
    dot = hg.fan_out_graph().to_dot()
    assert '"(handle) Classifier" [style="filled"' in dot and "called through handles" in dot
    assert '"FanOut" -> "(handle) Classifier" [label=<calls>, style=dashed];' in dot
    assert '"use_handle" -> "(handle) Tools" [label=<calls>, style=dashed];' in dot


def test_a_graph_inside_a_graph_is_a_labelled_cluster() -> None:
    counter = hg.Counter()
    review = hg.review_graph(counter)
    with dagserve.Input() as inp:
        outer = dagserve.Graph({"p": hg.post(review(inp["review"])), "c": counter(inp)}, name="outer")
    dot = outer.to_dot()
    cluster = dot[dot.index('subgraph "cluster_graph_review"') :]
    cluster = cluster[: cluster.index("\n  }")]
    assert "<b>review</b>" in cluster and '"review/sentiment"' in cluster
    # Counter is called inside and outside the inner graph: one deployment, drawn outside it.
    assert '"review/Counter"' not in cluster and '"review/Counter"' in dot


def test_the_docs_pictures_show_the_detect_classify_graphs() -> None:
    from examples.detect_classify.graph import graph
    from examples.detect_classify.pipelines import summary, together

    from .test_render import ROOT, _drawn_names, _svg_texts

    for name, drawn in (("detect_classify", graph), ("summary", summary), ("together", together)):
        texts = _svg_texts((ROOT / "docs" / "img" / f"{name}.svg").read_text(encoding="utf-8"))
        for step in _drawn_names(drawn):
            assert step in texts, (name, step)
        assert "calls" in texts and any(t.endswith("Classifier") for t in texts), name
