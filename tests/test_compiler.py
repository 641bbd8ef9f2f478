"""compile(): naming, plan contents, and every validation error."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import dagserve
from dagserve import CompileError, Plan
from dagserve._plan import Ref


@dagserve.node
def tokenize(text: str) -> list[str]:
    return text.split()


@dagserve.node
def count(tokens: list[str]) -> int:
    return len(tokens)


@dagserve.node
def shout(text: str) -> str:
    return text.upper()


@dagserve.node
class Embed:
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, tokens: list[str]) -> list[float]:
        return [0.0] * self.dim

    def norm(self, tokens: list[str]) -> float:
        return 0.0


def test_plan_lists_one_deployment_per_instance_and_function() -> None:
    e1, e2 = Embed(4), Embed(8)
    with dagserve.Input() as inp:
        toks = tokenize(inp["text"])
        out = {"a": e1(toks), "b": e1.norm(toks), "c": e2(toks), "n": count(toks)}
    plan = dagserve.compile(dagserve.Graph(out, name="g"))
    assert isinstance(plan, Plan)
    assert [d.name for d in plan.deployments] == ["tokenize", "Embed", "Embed_2", "count"]
    embed = plan.deployment("Embed")
    assert embed.kind == "model" and embed.methods == ("__call__", "norm") and embed.init_args == (4,)
    assert plan.deployment(e2).init_args == (8,)
    assert plan.deployment(tokenize).kind == "function"
    assert [s.name for s in plan.steps] == ["input", "input['text']", "tokenize", "Embed", "Embed.norm", "Embed_2", "count"]
    assert plan.output == {"a": Ref(3), "b": Ref(4), "c": Ref(5), "n": Ref(6)}
    assert plan.inline_nodes == ()


def test_names_are_deterministic() -> None:
    def build() -> Plan:
        with dagserve.Input() as inp:
            t = tokenize(inp)
            return dagserve.compile(dagserve.Graph([count(t), count(tokenize(inp)), Embed(2)(t)], name="d"))

    a, b = build(), build()
    assert [s.name for s in a.steps] == [s.name for s in b.steps]
    assert [s.name for s in a.steps] == ["input", "tokenize", "count", "tokenize#2", "count#2", "Embed"]
    assert a.edges == b.edges


def test_edges_are_labelled() -> None:
    with dagserve.Input() as inp:
        out = dagserve.switch(inp["lang"], {"en": shout(inp["text"])}, default=count(tokenize(inp["text"])))
    plan = dagserve.compile(dagserve.Graph(out))
    labels = {(e.source, e.target): e.label for e in plan.edges}
    assert labels[("input", "input['lang']")] == "['lang']"
    assert labels[("input['lang']", "switch")] == "key"
    assert labels[("shout", "switch")] == "case 'en'"
    assert labels[("count", "switch")] == "default"


def test_inline_nodes_are_flagged() -> None:
    fast = shout.options(inline=True)
    with dagserve.Input() as inp:
        plan = dagserve.compile(dagserve.Graph(fast(inp)))
    assert plan.inline_nodes == ("shout",)
    assert plan.remote_deployments == ()
    assert plan.steps[-1].inline


def test_explicit_name_clash_is_an_error() -> None:
    a = shout.options(name="same")
    b = tokenize.options(name="same")
    with dagserve.Input() as inp:
        g = dagserve.Graph([a(inp), b(inp)])
    with pytest.raises(CompileError, match=r"Two different nodes are both named 'same'"):
        dagserve.compile(g)


def test_graph_must_read_its_input() -> None:
    with pytest.raises(CompileError, match=r"Graph 'default' never reads its Input"):
        dagserve.compile(dagserve.Graph(shout("constant")))


def test_two_inputs_are_an_error() -> None:
    with dagserve.Input() as a:
        x = shout(a)
    with dagserve.Input() as b:
        y = shout(b)
    with pytest.raises(CompileError, match=r"mixes nodes from 2 different Inputs"):
        dagserve.compile(dagserve.Graph([x, y]))


def test_dead_nodes_are_reported() -> None:
    with dagserve.Input() as inp:
        used = shout(inp)
        tokenize(inp)  # built, never used
    with pytest.raises(CompileError, match=r"nodes that never reach its output: tokenize"):
        dagserve.compile(dagserve.Graph(used, name="g"))


def test_nodes_independent_of_the_payload_are_reported() -> None:
    with dagserve.Input() as inp:
        out = [shout(inp), shout("constant")]
    with pytest.raises(CompileError, match=r"do not depend on the request payload: shout#2"):
        dagserve.compile(dagserve.Graph(out))


def test_type_mismatch_across_an_edge_names_both_nodes_and_types() -> None:
    with dagserve.Input() as inp:
        out = shout(count(tokenize(inp)))
    with pytest.raises(CompileError, match=r"Node 'count' returns int but node 'shout' expects str for its argument 'text'"):
        dagserve.compile(dagserve.Graph(out))


def test_compatible_types_pass() -> None:
    @dagserve.node
    def as_float(x: float) -> float:
        return x

    @dagserve.node
    def maybe(x: int | None) -> int | None:
        return x

    @dagserve.node(max_batch_size=4)
    async def batched(xs: list[float]) -> list[int]:
        return [int(x) for x in xs]

    with dagserve.Input() as inp:
        out = maybe(batched(as_float(count(tokenize(inp)))))
    assert len(dagserve.compile(dagserve.Graph(out)).steps) == 6


def test_batched_element_types_are_checked() -> None:
    @dagserve.node(max_batch_size=4)
    async def batched(xs: list[str]) -> list[str]:
        return xs

    with dagserve.Input() as inp:
        out = batched(count(tokenize(inp)))
    with pytest.raises(CompileError, match=r"'count' returns int but node 'batched' expects str"):
        dagserve.compile(dagserve.Graph(out))


def test_plan_is_frozen_and_summarised() -> None:
    class Req(BaseModel):
        text: str

    with dagserve.Input(schema=Req) as inp:
        plan = dagserve.compile(dagserve.Graph(count(tokenize(inp["text"])), name="s"))
    with pytest.raises(AttributeError):
        plan.graph_name = "x"  # type: ignore[misc]
    summary = plan.summary()
    assert summary["graph"] == "s"
    assert summary["input_schema"]["properties"]["text"]["type"] == "string"
    assert [d["name"] for d in summary["deployments"]] == ["tokenize", "count"]


def test_unknown_node_lookup_lists_known_ones() -> None:
    with dagserve.Input() as inp:
        plan = dagserve.compile(dagserve.Graph(shout(inp)))
    with pytest.raises(dagserve.NodeNotFoundError, match=r"has no node 'nope'; its nodes are: 'shout'"):
        plan.deployment("nope")


def test_compile_rejects_non_graphs() -> None:
    with pytest.raises(CompileError, match="takes a dagserve.Graph, got int"):
        dagserve.compile(3)  # type: ignore[arg-type]


def test_a_thousand_node_chain_compiles_without_recursion_limits() -> None:
    # Timing lives in benchmarks/; this proves the passes are iterative, not recursive.
    with dagserve.Input() as inp:
        x = inp
        for _ in range(1000):
            x = shout(x)
    plan = dagserve.compile(dagserve.Graph(x))
    assert len(plan.steps) == 1001
    assert plan.steps[-1].name == "shout#1000"
