"""Diagrams: exact DOT text for each shape, files written by the real ``dot``, the live view and
the ``dagserve render`` command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

import dagserve
from dagserve import GraphvizNotFoundError, RenderError
from dagserve.cli.main import main
from dagserve.observe.stats import LatencyStats
from dagserve.render import _svg, live_dot, live_svg, to_dot

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"

# --------------------------------------------------------------------------------------------
# Small graphs, one per shape
# --------------------------------------------------------------------------------------------


@dagserve.node
def clean(text: str) -> str:
    return text.strip().lower()


@dagserve.node(num_replicas=2, max_batch_size=8, batch_wait_timeout_s=0.02, num_gpus=0.5)
class Classify:
    def __init__(self, labels: list[str]) -> None:
        self.labels = labels

    async def __call__(self, texts: list[str]) -> list[dict[str, object]]:
        return [{"label": self.labels[len(t) % len(self.labels)], "score": 1.0} for t in texts]


@dagserve.node
def respond(result: dict[str, object]) -> dict[str, object]:
    return {"answer": result["label"]}


@dagserve.node
def left(text: str) -> int:
    return len(text)


@dagserve.node(autoscaling={"min_replicas": 1, "max_replicas": 5}, num_cpus=1)
def right(text: str) -> int:
    return -len(text)


@dagserve.node(timeout_s=2, retries=1)
def merge(a: int, b: int) -> int:
    return a + b


@dagserve.node
def english(text: str) -> str:
    return "en:" + text


@dagserve.node
def german(text: str) -> str:
    return "de:" + text


@dagserve.node
def fallback(text: str) -> str:
    return "??:" + text


@dagserve.node
def v1(x: object) -> str:
    return "v1"


@dagserve.node(name="v2-canary", memory=512 * 1024 * 1024)
def v2(x: object) -> str:
    return "v2"


@dagserve.node(max_ongoing_requests=8)
class Encoder:
    def embed(self, text: str) -> list[float]:
        return [float(len(text))]

    def rerank(self, score: float) -> float:
        return score * 2


@dagserve.node
def similarity(a: list[float], b: list[float]) -> float:
    return a[0] - b[0]


@dagserve.node(inline=True)
def parse(payload: dict[str, str]) -> str:
    return payload["text"]


@dagserve.node(inline=True)
def to_json(score: float) -> dict[str, float]:
    return {"score": score}


@dagserve.node
class Score:
    def __call__(self, text: str) -> float:
        return float(len(text))


class Query(BaseModel):
    text: str
    top_k: int = 3
    tags: list[str] = []
    user: str | None = None


@dagserve.node
def search(text: str, *, k: int, user: str | None = None) -> list[str]:
    return [text] * k


def chain_graph() -> dagserve.Graph:
    return dagserve.Graph(clean >> Classify(labels=["pos", "neg"]) >> respond, name="chain")


def fanout_graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        text = clean(inp)
        out = merge(left(text), b=right(text))
    return dagserve.Graph(out, name="fanout")


def switch_graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        text = inp["text"]
        out = dagserve.switch(
            inp["lang"], {"en": english(text), "de": german(text)}, default=fallback(text), name="by_lang"
        )
    return dagserve.Graph(out, name="switch")


def split_graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = dagserve.split({"stable": v1(inp), "canary": v2(inp)}, [3, 1])
    return dagserve.Graph(out, name="split")


def shared_graph() -> dagserve.Graph:
    encoder = Encoder()
    with dagserve.Input() as inp:
        sim = similarity(encoder.embed(inp["query"]), encoder.embed(inp["doc"]))
        out = encoder.rerank(sim)
    return dagserve.Graph(out, name="shared")


def inline_graph() -> dagserve.Graph:
    return dagserve.Graph(parse >> Score() >> to_json, name="inline")


def schema_graph() -> dagserve.Graph:
    with dagserve.Input(schema=Query) as q:
        out = search(q["text"], k=q["top_k"], user=q["user"])
    return dagserve.Graph(out, name="schema")


def structured_graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        result = Classify(labels=["a", "b"])(clean(inp["text"]))
        out = {"label": result["label"], "lengths": [left(inp["text"]), right(inp["text"])], "version": 1}
    return dagserve.Graph(out, name="structured")


SHAPES = {
    "chain": chain_graph,
    "fanout": fanout_graph,
    "switch": switch_graph,
    "split": split_graph,
    "shared": shared_graph,
    "inline": inline_graph,
    "schema": schema_graph,
    "structured": structured_graph,
}

# --------------------------------------------------------------------------------------------
# Exact DOT text
# --------------------------------------------------------------------------------------------

HEADER = """\
digraph "{name}" {{
  graph [rankdir=LR, fontname="Helvetica", fontsize=13, label=<<b>{name}</b><br align="left"/>>, labelloc=t, \
labeljust=l, nodesep=0.3, ranksep=0.5, pad=0.2];
  node [fontname="Helvetica", fontsize=11, shape=box, style="filled", color="#334155", margin="0.14,0.07"];
  edge [fontname="Helvetica", fontsize=9, color="#64748b", fontcolor="#334155", arrowsize=0.7];
"""
# The input and output nodes' table tag, written once below as {IO}.
IO = '<table border="1" cellborder="0" cellspacing="0" cellpadding="3" style="rounded" bgcolor="#dcfce7" color="#334155">'

EXPECTED = {
    "chain": """\
  "input" [shape=plain, style=solid, label=<{IO}<tr><td><b>input</b></td></tr></table>>];
  "clean" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>clean</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica</font>>];
  "Classify" [style="filled", fillcolor="#dbeafe", label=<<b>Classify</b><br/><font point-size="9" color="#64748b">model<br/>2 replicas<br/>batch 8, wait 20 ms<br/>GPU 0.5</font>>];
  "respond" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>respond</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica</font>>];
  "(output)" [shape=plain, style=solid, label=<{IO}<tr><td><b>output</b></td></tr></table>>];
  "input" -> "clean";
  "clean" -> "Classify";
  "Classify" -> "respond";
  "respond" -> "(output)";
}
""",
    "fanout": """\
  "input" [shape=plain, style=solid, label=<{IO}<tr><td><b>input</b></td></tr></table>>];
  "clean" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>clean</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica</font>>];
  "left" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>left</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica</font>>];
  "right" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>right</b><br/><font point-size="9" color="#64748b">business logic<br/>autoscaling 1-5 replicas<br/>CPU 1</font>>];
  "merge" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>merge</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica<br/>timeout 2 s, retries 1</font>>];
  "(output)" [shape=plain, style=solid, label=<{IO}<tr><td><b>output</b></td></tr></table>>];
  "input" -> "clean";
  "clean" -> "left";
  "clean" -> "right";
  "left" -> "merge" [label=<a>];
  "right" -> "merge" [label=<b>];
  "merge" -> "(output)";
}
""",
    "switch": """\
  "input" [shape=plain, style=solid, label=<{IO}<tr><td><b>input</b></td></tr></table>>];
  "english" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>english</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica</font>>];
  "german" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>german</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica</font>>];
  "fallback" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>fallback</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica</font>>];
  "by_lang" [shape=diamond, margin="0.02,0.02", fillcolor="#f3e8ff", label=<<b>by_lang</b><br/><font point-size="9" color="#64748b">switch</font>>];
  "(output)" [shape=plain, style=solid, label=<{IO}<tr><td><b>output</b></td></tr></table>>];
  "input" -> "english" [label=<["text"]>];
  "input" -> "german" [label=<["text"]>];
  "input" -> "fallback" [label=<["text"]>];
  "input" -> "by_lang" [label=<["lang"] → key>];
  "english" -> "by_lang" [label=<"en">, style=dashed];
  "german" -> "by_lang" [label=<"de">, style=dashed];
  "fallback" -> "by_lang" [label=<default>, style=dashed];
  "by_lang" -> "(output)";
}
""",
    "split": """\
  "input" [shape=plain, style=solid, label=<{IO}<tr><td><b>input</b></td></tr></table>>];
  "v1" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>v1</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica</font>>];
  "v2-canary" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>v2-canary</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica<br/>mem 512 MiB</font>>];
  "split" [shape=diamond, margin="0.02,0.02", fillcolor="#f3e8ff", label=<<b>split</b>>];
  "(output)" [shape=plain, style=solid, label=<{IO}<tr><td><b>output</b></td></tr></table>>];
  "input" -> "v1";
  "input" -> "v2-canary";
  "v1" -> "split" [label=<stable 75%>, style=dashed];
  "v2-canary" -> "split" [label=<canary 25%>, style=dashed];
  "split" -> "(output)";
}
""",
    "shared": """\
  "input" [shape=plain, style=solid, label=<{IO}<tr><td><b>input</b></td></tr></table>>];
  subgraph "cluster_Encoder" {
    graph [label=<<b>Encoder</b><br/><font point-size="9" color="#64748b">model<br/>1 replica<br/>max ongoing 8</font>>, labeljust=l, style="rounded,filled", fillcolor="#eff6ff", color="#334155"];
    "Encoder.embed" [style="filled", fillcolor="#dbeafe", label=<<b>Encoder.embed</b>>];
    "Encoder.embed#2" [style="filled", fillcolor="#dbeafe", label=<<b>Encoder.embed#2</b>>];
    "Encoder.rerank" [style="filled", fillcolor="#dbeafe", label=<<b>Encoder.rerank</b>>];
  }
  "similarity" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>similarity</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica</font>>];
  "(output)" [shape=plain, style=solid, label=<{IO}<tr><td><b>output</b></td></tr></table>>];
  "input" -> "Encoder.embed" [label=<["query"]>];
  "input" -> "Encoder.embed#2" [label=<["doc"]>];
  "Encoder.embed" -> "similarity" [label=<a>];
  "Encoder.embed#2" -> "similarity" [label=<b>];
  "similarity" -> "Encoder.rerank";
  "Encoder.rerank" -> "(output)";
}
""",
    "inline": """\
  "input" [shape=plain, style=solid, label=<{IO}<tr><td><b>input</b></td></tr></table>>];
  "parse" [style="rounded,filled,dashed", fillcolor="#fef3c7", label=<<b>parse</b><br/><font point-size="9" color="#64748b">business logic, inline</font>>];
  "Score" [style="filled", fillcolor="#dbeafe", label=<<b>Score</b><br/><font point-size="9" color="#64748b">model<br/>1 replica</font>>];
  "to_json" [style="rounded,filled,dashed", fillcolor="#fef3c7", label=<<b>to_json</b><br/><font point-size="9" color="#64748b">business logic, inline</font>>];
  "(output)" [shape=plain, style=solid, label=<{IO}<tr><td><b>output</b></td></tr></table>>];
  "input" -> "parse";
  "parse" -> "Score";
  "Score" -> "to_json";
  "to_json" -> "(output)";
}
""",
    "schema": """\
  "input" [shape=plain, style=solid, label=<{IO}<tr><td><b>input</b>: Query</td></tr><tr><td port="f0" align="left">text: str</td></tr><tr><td port="f1" align="left">top_k: int = 3</td></tr><tr><td port="f2" align="left">tags: list[str] = []</td></tr><tr><td port="f3" align="left">user: str | None = None</td></tr></table>>];
  "search" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>search</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica</font>>];
  "(output)" [shape=plain, style=solid, label=<{IO}<tr><td><b>output</b></td></tr></table>>];
  "input":f0:e -> "search" [label=<["text"] → text>];
  "input":f1:e -> "search" [label=<["top_k"] → k>];
  "input":f3:e -> "search" [label=<["user"] → user>];
  "search" -> "(output)";
}
""",
    "structured": """\
  "input" [shape=plain, style=solid, label=<{IO}<tr><td><b>input</b></td></tr></table>>];
  "clean" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>clean</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica</font>>];
  "Classify" [style="filled", fillcolor="#dbeafe", label=<<b>Classify</b><br/><font point-size="9" color="#64748b">model<br/>2 replicas<br/>batch 8, wait 20 ms<br/>GPU 0.5</font>>];
  "left" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>left</b><br/><font point-size="9" color="#64748b">business logic<br/>1 replica</font>>];
  "right" [style="rounded,filled", fillcolor="#fef3c7", label=<<b>right</b><br/><font point-size="9" color="#64748b">business logic<br/>autoscaling 1-5 replicas<br/>CPU 1</font>>];
  "(output)" [shape=plain, style=solid, label=<{IO}<tr><td><b>output</b></td></tr><tr><td port="p0" align="left">label</td></tr><tr><td port="p1" align="left">lengths</td></tr><tr><td port="p2" align="left">version = 1</td></tr></table>>];
  "input" -> "clean" [label=<["text"]>];
  "clean" -> "Classify";
  "input" -> "left" [label=<["text"]>];
  "input" -> "right" [label=<["text"]>];
  "Classify" -> "(output)":p0:w [label=<["label"]>];
  "left" -> "(output)":p1:w [label=<lengths[0]>];
  "right" -> "(output)":p1:w [label=<lengths[1]>];
}
""",}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_dot_text_is_exact_for_each_shape(shape: str) -> None:
    expected = HEADER.format(name=shape) + EXPECTED[shape].replace("{IO}", IO)
    assert SHAPES[shape]().to_dot() == expected


def test_dot_is_deterministic_and_the_same_from_graph_or_plan() -> None:
    for build in SHAPES.values():
        first, second = build(), build()  # fresh node objects each time
        assert first.to_dot() == second.to_dot()
        assert to_dot(dagserve.compile(first)) == first.to_dot()


@dagserve.node(max_batch_size=4)
async def pack(items: list[dict[str, object]]) -> list[int]:
    return [len(item) for item in items]


def test_edge_labels_name_places_inside_packed_arguments_and_branches() -> None:
    with dagserve.Input() as inp:
        size = pack({"text": clean(inp["text"]), "user": inp["user"]})
        out = dagserve.split(
            {"a": {"n": size}, "b": {"n": left(inp["text"])}}, {"a": 1, "b": 1}, key=inp["user"], name="ab"
        )
    edges = [line.strip() for line in dagserve.Graph(out, name="packed").to_dot().splitlines() if "->" in line]
    assert edges == [
        '"input" -> "clean" [label=<["text"]>];',
        '"clean" -> "pack" [label=<items["text"]>];',
        '"input" -> "pack" [label=<["user"] → items["user"]>];',
        '"input" -> "left" [label=<["text"]>];',
        '"input" -> "ab" [label=<["user"] → key>];',
        '"pack" -> "ab" [label=<a 50% ["n"]>, style=dashed];',
        '"left" -> "ab" [label=<b 50% ["n"]>, style=dashed];',
        '"ab" -> "(output)";',
    ]
    assert "<b>ab</b><br/><font point-size=\"9\" color=\"#64748b\">split<br/>sticky by key</font>" in (
        dagserve.Graph(out, name="packed").to_dot()
    )


def test_labels_are_escaped_and_dot_accepts_them(tmp_path: Path) -> None:
    with dagserve.Input() as inp:
        out = dagserve.switch(inp["k"], {'say "hi" <now> & \\': english(inp)}, default=german(inp), name='odd "n" <&>')
        # A backslash before N would be Graphviz's "node name" escape if it were not doubled.
        out = dagserve.switch(inp["n"], {"\\N": out}, name="route\\N")
    graph = dagserve.Graph(out, name="escapes")
    dot = graph.to_dot()
    assert '"odd \\"n\\" <&>" [shape=diamond' in dot  # a quoted DOT id
    assert '<b>odd "n" &lt;&amp;&gt;</b>' in dot  # HTML-escaped label text
    assert '[label=<"say \\\\"hi\\\\" &lt;now&gt; &amp; \\\\\\\\">, style=dashed]' in dot
    texts = _svg_texts(graph.render(tmp_path / "escapes.svg").read_text(encoding="utf-8"))
    assert 'odd "n" <&>' in texts
    assert "route\\N" in texts
    assert '"\\\\N"' in texts
    assert '"say \\"hi\\" <now> & \\\\"' in texts


def test_to_dot_rejects_what_is_not_a_graph() -> None:
    with pytest.raises(RenderError, match=r"drawn from a dagserve.Graph or Plan, got int"):
        to_dot(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Files written by the real `dot`
# --------------------------------------------------------------------------------------------


def _svg_texts(svg: str) -> list[str]:
    root = ElementTree.fromstring(svg)
    return [el.text for el in root.iter(f"{SVG}text") if el.text]


def _drawn_names(graph: dagserve.Graph) -> list[str]:
    """The name of every drawn step: calls, switches and splits (selections are edge labels)."""
    return [s.name for s in dagserve.compile(graph).steps if s.kind in ("call", "switch", "split")]


def test_svg_is_xml_with_every_node_name(tmp_path: Path) -> None:
    for shape, build in SHAPES.items():
        graph = build()
        path = graph.render(tmp_path / f"{shape}.svg")
        texts = _svg_texts(path.read_text(encoding="utf-8"))
        for name in [*_drawn_names(graph), "input", "output"]:
            assert name in texts, (shape, name)


def test_png_and_pdf_have_valid_headers(tmp_path: Path) -> None:
    graph = shared_graph()
    assert graph.render(tmp_path / "g.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert graph.render(tmp_path / "g.PDF").read_bytes().startswith(b"%PDF-")


def test_dot_suffix_writes_the_source_and_format_overrides_the_suffix(tmp_path: Path) -> None:
    graph = chain_graph()
    assert graph.render(tmp_path / "g.dot").read_text(encoding="utf-8") == graph.to_dot()
    assert graph.render(tmp_path / "g.out", format="svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")


def test_bad_paths_and_formats_are_clear_errors(tmp_path: Path) -> None:
    graph = chain_graph()
    with pytest.raises(RenderError, match=r"end the path with \.svg, \.png, \.pdf or \.dot"):
        graph.render(tmp_path / "g.jpg")
    with pytest.raises(RenderError, match=r"Unknown diagram format 'gif'"):
        graph.render(tmp_path / "g.svg", format="gif")
    with pytest.raises(RenderError, match=r"directory .*missing.* does not exist"):
        graph.render(tmp_path / "missing" / "g.svg")


def test_notebook_display_is_svg() -> None:
    svg = switch_graph()._repr_svg_()
    assert ElementTree.fromstring(svg).tag == f"{SVG}svg"
    assert "by_lang" in _svg_texts(svg)


def test_missing_dot_is_a_clear_error_and_to_dot_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no `dot` anywhere on PATH
    _svg.cache_clear()
    graph = fanout_graph()
    with pytest.raises(GraphvizNotFoundError, match=r"`dot` program, which is not on PATH.*apt-get install graphviz.*brew install graphviz"):
        graph.render(tmp_path / "g.svg")
    assert graph._repr_svg_() is None  # Jupyter then falls back to the text repr
    assert graph.to_dot().startswith('digraph "fanout" {')
    assert graph.render(tmp_path / "g.dot").read_text(encoding="utf-8") == graph.to_dot()


def _wide_graph(layers: int = 10, width: int = 20) -> dagserve.Graph:
    """``layers`` x ``width`` = 200 nodes, each reading two nodes of the layer before."""
    with dagserve.Input() as inp:
        prev = [left.options(name=f"in_{j}")(inp[f"x{j}"]) for j in range(width)]
        for i in range(1, layers):
            prev = [
                merge.options(name=f"l{i}_n{j}", num_replicas=1 + j % 3)(prev[j], prev[(j + 1) % width])
                for j in range(width)
            ]
    return dagserve.Graph({f"y{j}": p for j, p in enumerate(prev)}, name="wide")


def _boxes(svg: str) -> dict[str, tuple[float, float, float, float]]:
    """Bounding box (x0, y0, x1, y1) of every drawn node, by its DOT id."""
    boxes = {}
    for g in ElementTree.fromstring(svg).iter(f"{SVG}g"):
        if g.get("class") != "node":
            continue
        title = g.find(f"{SVG}title")
        assert title is not None and title.text
        coords: list[float] = []
        for shape in g:
            raw = shape.get("points") or shape.get("d") or ""
            coords.extend(float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", raw))
        xs, ys = coords[0::2], coords[1::2]
        boxes[title.text] = (min(xs), min(ys), max(xs), max(ys))
    return boxes


def test_a_200_node_graph_renders_left_to_right_without_overlaps(tmp_path: Path) -> None:
    graph = _wide_graph()
    names = _drawn_names(graph)
    assert len(names) == 200
    svg = graph.render(tmp_path / "wide.svg").read_text(encoding="utf-8")  # how fast: `make bench` (build)
    texts = set(_svg_texts(svg))
    assert set(names) <= texts
    boxes = _boxes(svg)
    assert len(boxes) == 202  # the steps, the input and the output
    # Left to right: the input is left of every step, the output right of every step.
    assert all(boxes["input"][2] <= boxes[n][0] for n in names)
    assert all(boxes[n][2] <= boxes["(output)"][0] for n in names)
    ordered = sorted(boxes.items(), key=lambda kv: kv[1][0])
    for i, (a, (ax0, ay0, ax1, ay1)) in enumerate(ordered):
        for b, (bx0, by0, bx1, by1) in ordered[i + 1 :]:
            if bx0 >= ax1:
                break  # sorted by left edge: nothing further right can overlap a
            assert ay1 <= by0 or by1 <= ay0, f"nodes {a!r} and {b!r} overlap"


# --------------------------------------------------------------------------------------------
# The live view
# --------------------------------------------------------------------------------------------


def _node_line(dot: str, name: str) -> str:
    return next(line for line in dot.splitlines() if line.strip().startswith(f'"{name}" ['))


def test_live_view_shows_replicas_from_status_and_recent_latency() -> None:
    from examples.quickstart import graph

    with dagserve.deploy(graph, backend="local") as app:
        before = live_dot(app)  # installs the latency recorder
        assert "live: no requests recorded yet" in before
        assert "no recent calls" in _node_line(before, "clean")
        for i in range(6):
            app.call({"text": "a great film", "lang": "en" if i % 3 else "fr"})
        app.scale("Sentiment", num_replicas=3)

        dot = live_dot(app)
        status = app.status()
        assert status.nodes["Sentiment"].running_replicas == 3
        for name, node in status.nodes.items():
            assert f"replicas {node.running_replicas}/{node.target_replicas} running" in _node_line(dot, name)
        assert "replicas 3/3 running" in _node_line(dot, "Sentiment")
        assert "live: 6 requests in the last 60 s" in dot
        for name in ("clean", "Sentiment", "Toxicity", "respond", "not_supported"):
            assert re.search(r"p50 [\d.]+ m?s, p99 [\d.]+ m?s", _node_line(dot, name)), name
        # The recorder was installed once, however often the view is drawn.
        assert sum(isinstance(o, LatencyStats) for o in app.observers) == 1

        svg = live_svg(app)
        assert "replicas 3/3 running" in _svg_texts(svg)


# --------------------------------------------------------------------------------------------
# `dagserve render`
# --------------------------------------------------------------------------------------------


def test_cli_writes_a_file_or_prints_dot(tmp_path: Path) -> None:
    from examples.quickstart import graph

    runner = CliRunner()
    out = tmp_path / "q.svg"
    result = runner.invoke(main, ["render", "examples.quickstart:graph", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}" in result.stderr
    assert "Sentiment" in _svg_texts(out.read_text(encoding="utf-8"))

    result = runner.invoke(main, ["render", "examples.quickstart:graph"])
    assert result.exit_code == 0, result.output
    assert result.stdout == graph.to_dot()


def test_cli_reports_bad_targets_and_missing_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["render", "examples.quickstart:clean", "-o", str(tmp_path / "x.svg")])
    assert result.exit_code == 2
    assert "'examples.quickstart:clean' is a FunctionNode, not a dagserve.Graph" in result.output

    result = runner.invoke(main, ["render", "examples.quickstart:graph", "-f", "png"])
    assert result.exit_code == 2
    assert "give it a path with -o FILE" in result.output

    monkeypatch.setenv("PATH", str(tmp_path))
    result = runner.invoke(main, ["render", "examples.quickstart:graph", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "brew install graphviz" in result.output
    assert not (tmp_path / "x.png").exists()


def test_cli_in_a_real_process(tmp_path: Path) -> None:
    out = tmp_path / "quickstart.png"
    done = subprocess.run(
        [sys.executable, "-m", "dagserve", "render", "examples.quickstart:graph", "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_docs_picture_shows_the_quickstart_graph() -> None:
    from examples.quickstart import graph

    texts = _svg_texts((ROOT / "docs" / "img" / "quickstart.svg").read_text(encoding="utf-8"))
    for name in _drawn_names(graph):
        assert name in texts


def test_the_live_view_shows_a_multiplexed_nodes_models_and_hit_ratio() -> None:
    from tests import multiplex_graphs as mg

    with dagserve.deploy(mg.tenants(replicas=1), backend="local") as app:
        assert "models 0 held, hit ratio -" in _node_line(live_dot(app), "Tenants")
        for tenant in ("a", "b", "a", "a"):
            app.call({"x": 1, "tenant": tenant})
        assert "models 2 held, hit ratio 0.50" in _node_line(live_dot(app), "Tenants")
