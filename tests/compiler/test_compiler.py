"""compile(): naming, plan contents, and every validation error."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field, computed_field

import dagserve
from dagserve import CompileError, Plan
from dagserve.compiler.plan import Ref


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


def test_a_graph_reading_nothing_of_the_payload_compiles_without_an_input_step() -> None:
    plan = dagserve.compile(dagserve.Graph(shout("constant")))  # issue 18 item 7
    assert [s.kind for s in plan.steps] == ["call"] and plan.input_schema is None


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


def test_nodes_independent_of_the_payload_are_allowed() -> None:
    with dagserve.Input() as inp:
        out = [shout(inp), shout("constant")]
    plan = dagserve.compile(dagserve.Graph(out))  # issue 18 item 7: they run per request
    assert [s.name for s in plan.steps if s.kind == "call"] == ["shout", "shout#2"]


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


# -- payload fields against the Input's schema ------------------------------------------------------


class OnlyA(BaseModel):
    a: str


class Inner(BaseModel):
    x: str


class Outer(BaseModel):
    inner: Inner
    n: int = 0
    aliased: str = Field("", alias="Aliased")

    @property
    def shouted(self) -> str:
        return self.inner.x.upper()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def twice(self) -> int:
        return 2 * self.n


@dagserve.node
def echo(value: Any) -> Any:
    return value


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")

    a: str = ""


def compile_error(graph: dagserve.Graph) -> str:
    """The message of the CompileError compiling ``graph`` raises."""
    with pytest.raises(CompileError) as info:
        dagserve.compile(graph)
    return str(info.value)


def test_reading_a_field_the_schema_does_not_declare_is_a_compile_error() -> None:
    with dagserve.Input(schema=OnlyA) as inp:
        graph = dagserve.Graph(shout(inp["b"]), name="undeclared")
    message = compile_error(graph)
    assert "Node 'shout' reads input['b']" in message
    assert "schema OnlyA has no field 'b' (fields: a)" in message
    assert "Declare it in OnlyA (e.g. `b: str`)" in message
    # deploy compiles too: the graph never starts, instead of failing every request with a 400.
    with pytest.raises(CompileError, match="has no field 'b'"):
        dagserve.deploy(graph, backend="local")


@pytest.mark.parametrize(
    ("select", "match"),
    [
        (lambda inp: inp["inner"]["y"], r"reads input\['inner'\]\['y'\], but the Input's schema Inner has no field 'y' \(fields: x\)"),
        (lambda inp: inp["Aliased"], r"Outer has no field 'Aliased' \(fields: inner, n, aliased\)"),
        (lambda inp: inp[0], r"is a Outer \(the Input's schema\), read by field name only"),
    ],
)
def test_undeclared_fields_are_found_in_nested_models_aliases_and_positions(select: Any, match: str) -> None:
    with dagserve.Input(schema=Outer) as inp:
        graph = dagserve.Graph(echo(select(inp)), name="undeclared")
    with pytest.raises(CompileError, match=match):
        dagserve.compile(graph)


def test_declared_fields_properties_and_open_schemas_compile() -> None:
    with dagserve.Input(schema=Outer) as inp:
        out = {
            "x": shout(inp["inner"]["x"]),
            "n": echo(inp["n"]),
            "a": echo(inp["aliased"]),
            "shouted": echo(inp["shouted"]),
            "twice": echo(inp["twice"]),
            "inner": echo(inp["inner"]),
        }
        graph = dagserve.Graph(out, name="declared")
    with dagserve.deploy(graph, backend="local") as app:
        result = app.call({"inner": {"x": "hi"}, "n": 2, "Aliased": "al"})
    assert result == {"x": "HI", "n": 2, "a": "al", "shouted": "HI", "twice": 4, "inner": Inner(x="hi")}
    with dagserve.Input(schema=Open) as inp:
        graph = dagserve.Graph(echo(inp["b"]), name="open")
    with dagserve.deploy(graph, backend="local") as app:
        assert app.call({"b": 7}) == 7  # extra="allow" keeps undeclared fields
    with dagserve.Input() as inp:  # no schema: any field may be read
        dagserve.compile(dagserve.Graph(echo(inp["anything"][0]), name="schemaless"))


# -- batched nodes take a list ----------------------------------------------------------------------


@dagserve.node(max_batch_size=4)
def upper_one(x: str) -> str:
    return x.upper()


@dagserve.node(max_batch_size=4)
class OneItem:
    def __call__(self, item: OnlyA) -> str:
        return item.a


def test_a_batched_parameter_annotated_as_one_item_is_a_compile_error() -> None:
    with dagserve.Input() as inp:
        graph = dagserve.Graph(upper_one(inp["text"]), name="one")
    message = compile_error(graph)
    assert "Node 'upper_one' is batched (max_batch_size=4)" in message
    assert "its parameter 'x' receives a list of up to 4 items, but it is annotated str" in message
    assert "Annotate it `x: list[str]`" in message and "or drop max_batch_size" in message
    with pytest.raises(CompileError, match="upper_one"):
        dagserve.deploy(graph, backend="local")
    with dagserve.Input(schema=OnlyA) as inp:
        graph = dagserve.Graph(OneItem()(inp), name="model")
    with pytest.raises(CompileError, match=r"Node 'OneItem' is batched .* parameter 'item' .* annotated OnlyA"):
        dagserve.compile(graph)


T = TypeVar("T")


@dagserve.node(max_batch_size=4)
class Stacked:
    def __call__(self, items: np.ndarray) -> list[int]:  # built from the list: np.stack(items)
        return [int(v) for v in np.stack(items).sum(axis=1)]


def _batched_with(annotation: Any) -> Any:
    def fn(items):  # type: ignore[no-untyped-def]
        return [len(i) for i in items]

    if annotation is not inspect.Parameter.empty:
        fn.__annotations__ = {"items": annotation}
    return dagserve.node(max_batch_size=4, name="batched")(fn)


@pytest.mark.parametrize(
    "annotation",
    [
        list[str],
        list,
        Sequence[str],
        Iterable[str],
        Any,
        object,
        str | list[str],
        tuple[str, ...],
        T,
        "NotDefinedAnywhere",  # an unresolvable string annotation: cannot be checked, so allowed
        "list[str]",  # a string annotation that resolves: checked
        inspect.Parameter.empty,  # unannotated
    ],
)
def test_batched_parameters_that_may_be_lists_compile_and_run(annotation: Any) -> None:
    node = _batched_with(annotation)
    with dagserve.Input() as inp:
        graph = dagserve.Graph(node(inp["text"]), name="lists")
    with dagserve.deploy(graph, backend="local") as app:
        assert app.call({"text": "abc"}) == 3


def test_a_batched_array_parameter_compiles() -> None:
    with dagserve.Input() as inp:
        graph = dagserve.Graph(Stacked()(inp["v"]), name="arrays")
    with dagserve.deploy(graph, backend="local") as app:
        assert app.call({"v": [1, 2, 3]}) == 6
