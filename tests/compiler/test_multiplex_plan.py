"""Multiplexed nodes in the graph model and the plan: model_id= consumed, where each call's id
comes from, and the mistakes refused while building or compiling."""

from __future__ import annotations

from typing import Any

import pytest

import dagserve
from dagserve import CompileError, GraphError
from dagserve.compiler.plan import Multiplexing, Ref


@dagserve.node
class Tenants:
    @dagserve.multiplexed(max_models_per_replica=5)
    async def load(self, model_id: str) -> str:
        return model_id

    async def __call__(self, x: int) -> str:
        return f"{dagserve.model_id()}:{x}"

    async def explain(self, x: int) -> str:
        return str(x)


@dagserve.node
class Plain:
    async def __call__(self, x: int, model_id: str = "") -> str:
        return model_id


@dagserve.node
def pick(x: int) -> str:
    return "a"


def test_model_id_is_consumed_and_recorded_per_call_step() -> None:
    with dagserve.Input() as inp:
        t = Tenants()
        out = {"a": t(inp["x"], model_id=inp["tenant"]), "b": t.explain(inp["x"], model_id="fixed")}
        g = dagserve.Graph(out, name="g")
    plan = dagserve.compile(g)
    spec = plan.deployment("Tenants")
    assert spec.multiplexed == Multiplexing("load", 5)
    call = plan.step("Tenants")
    assert call.kwargs == {}
    assert isinstance(call.model_id, Ref)
    assert plan.steps[call.model_id.index].name == "input['tenant']"
    assert call.model_id.index in call.inputs
    assert plan.step("Tenants.explain").model_id == "fixed"
    assert any(e.target == "Tenants" and e.label == "model_id" for e in plan.edges)
    summary = plan.summary()["deployments"][0]
    assert summary["multiplexed"] == {"loader": "load", "max_models_per_replica": 5}


def test_any_node_output_may_give_the_id() -> None:
    with dagserve.Input() as inp:
        g = dagserve.Graph(Tenants()(inp["x"], model_id=pick(inp["x"])), name="g")
    plan = dagserve.compile(g)
    source = plan.step("Tenants").model_id
    assert plan.steps[source.index].name == "pick"


def test_model_id_on_a_class_without_a_loader_is_an_ordinary_argument() -> None:
    with dagserve.Input() as inp:
        g = dagserve.Graph(Plain()(inp["x"], model_id=inp["tenant"]), name="g")
    plan = dagserve.compile(g)
    step = plan.step("Plain")
    assert step.model_id is None and isinstance(step.kwargs["model_id"], Ref)
    assert plan.deployment("Plain").multiplexed is None


def test_a_multiplexed_call_needs_a_model_id() -> None:
    with dagserve.Input() as inp, pytest.raises(GraphError, match="is multiplexed.*model_id="):
        Tenants()(inp["x"])


@pytest.mark.parametrize("bad", ["", "x" * 257, 3, "a\tb"])
def test_a_constant_model_id_is_checked_while_building(bad: Any) -> None:
    with dagserve.Input() as inp, pytest.raises(GraphError, match="a model id is a non-empty string"):
        Tenants()(inp["x"], model_id=bad)


def test_two_loaders_on_one_class_are_refused() -> None:
    @dagserve.node
    class Two:
        @dagserve.multiplexed(max_models_per_replica=1)
        def load(self, model_id: str) -> str:
            return model_id

        @dagserve.multiplexed(max_models_per_replica=1)
        def load_other(self, model_id: str) -> str:
            return model_id

        def __call__(self, x: int) -> int:
            return x

    with dagserve.Input() as inp, pytest.raises(GraphError, match="has 2 @dagserve.multiplexed loaders"):
        Two()(inp["x"], model_id="a")


def test_map_over_a_multiplexed_node_is_refused() -> None:
    with dagserve.Input() as inp, pytest.raises(GraphError, match="map does not carry a model id"):
        dagserve.map(Tenants(), inp["xs"])


def test_a_multiplexed_generator_is_refused_at_compile() -> None:
    @dagserve.node
    class Streams:
        @dagserve.multiplexed(max_models_per_replica=1)
        async def load(self, model_id: str) -> str:
            return model_id

        async def __call__(self, x: int) -> Any:
            yield x

    with dagserve.Input() as inp:
        g = dagserve.Graph(Streams()(inp["x"], model_id="a"), name="g")
    with pytest.raises(CompileError, match="streaming is not supported"):
        dagserve.compile(g)


def test_a_batched_multiplexed_node_takes_one_item_and_its_model_id() -> None:
    @dagserve.node(max_batch_size=4)
    class Batched:
        @dagserve.multiplexed(max_models_per_replica=1)
        async def load(self, model_id: str) -> str:
            return model_id

        async def __call__(self, xs: list[int]) -> list[int]:
            return xs

    with dagserve.Input() as inp:
        g = dagserve.Graph(Batched()(inp["x"], model_id=inp["t"]), name="g")
    assert dagserve.compile(g).step("Batched").model_id is not None


def test_a_multiplexed_method_with_a_model_id_parameter_is_refused() -> None:
    @dagserve.node
    class Takes:
        @dagserve.multiplexed(max_models_per_replica=1)
        async def load(self, model_id: str) -> str:
            return model_id

        async def __call__(self, x: int, model_id: str) -> str:
            return model_id

    with dagserve.Input() as inp, pytest.raises(GraphError, match="drop the parameter and read the id"):
        Takes()(inp["x"], model_id=inp["t"])
