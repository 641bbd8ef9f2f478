"""Building graphs: decorators, calls, selection, >>, switch, split, Graph."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import dagserve
from dagserve import GraphError
from dagserve.graph import CallNode, Chain, FunctionNode, ModelClass, ModelInstance, SelectNode, SplitNode, SwitchNode


@dagserve.node
def double(x: int) -> int:
    return 2 * x


@dagserve.node(num_replicas=2)
async def add(a: int, b: int = 0) -> int:
    return a + b


@dagserve.node
class Model:
    def __init__(self, scale: int = 1) -> None:
        self.scale = scale

    def __call__(self, x: int) -> int:
        return x * self.scale

    def predict(self, x: int) -> int:
        return x

    label = "not a method"


@dagserve.node(max_batch_size=4)
class Batched:
    async def __call__(self, xs: list[int]) -> list[int]:
        return xs


def test_bare_and_configured_decorator() -> None:
    assert isinstance(double, FunctionNode)
    assert double.name == "double" and double.node_options.num_replicas == 1
    assert add.node_options.num_replicas == 2 and add.is_async
    assert isinstance(Model, ModelClass) and Model.cls.__name__ == "Model"
    assert double.fn(3) == 6  # the plain function stays usable in unit tests


def test_options_returns_a_copy() -> None:
    d2 = double.options(num_replicas=3, name="double_fast")
    assert d2 is not double and d2.name == "double_fast" and d2.node_options.num_replicas == 3
    assert double.node_options.num_replicas == 1
    m = Model(2).options(num_gpus=0.5)
    assert isinstance(m, ModelInstance) and m.node_options.num_gpus == 0.5


def test_calls_record_nodes_with_nested_arguments() -> None:
    with dagserve.Input() as inp:
        a = double(inp["x"])
        b = add(a, b=inp["y"])
        c = add([a, b][0], 1)
    assert isinstance(a, CallNode) and a.dependencies() == (a.args[0],)
    assert isinstance(a.args[0], SelectNode) and a.args[0].key == "x"
    assert b.dependencies() == (a, b.kwargs["b"])
    assert c.dependencies() == (a,)


def test_model_instance_calls_and_methods() -> None:
    m = Model(3)
    with dagserve.Input() as inp:
        n1 = m(inp)
        n2 = m.predict(inp)
    assert n1.target is m and n1.method == "__call__"
    assert n2.target is m and n2.method == "predict"


def test_unknown_method_lists_public_methods() -> None:
    with pytest.raises(GraphError, match=r"Model 'Model' has no method 'forward'\. Its public methods: \['predict'\]"):
        Model().forward  # noqa: B018


def test_non_callable_attribute_is_not_a_method() -> None:
    with pytest.raises(GraphError, match="has no method 'label'"):
        Model().label  # noqa: B018


def test_model_without_call_says_to_call_a_method() -> None:
    @dagserve.node
    class NoCall:
        def run(self, x: int) -> int:
            return x

    with dagserve.Input() as inp, pytest.raises(GraphError, match=r"defines no __call__; call one of its methods"):
        NoCall()(inp)


def test_wrong_arguments_fail_at_build_time() -> None:
    with dagserve.Input() as inp:
        with pytest.raises(GraphError, match=r"Node 'double' cannot be called with these arguments: .*unexpected keyword argument 'z'"):
            double(inp, z=1)
        with pytest.raises(GraphError, match=r"Node 'Model.predict' cannot be called with these arguments"):
            Model().predict(inp, inp)
    with pytest.raises(GraphError, match=r"Model 'Model' cannot be constructed with these arguments"):
        Model(1, 2, 3)


def test_constructor_arguments_must_be_constants() -> None:
    with dagserve.Input() as inp, pytest.raises(GraphError, match=r"got a graph node \(Input\[.*\]|got a graph node"):
        Model(inp)


def test_model_instances_and_function_nodes_are_constructor_arguments_as_handles() -> None:
    # Issue 18: an instance or function node given to a constructor is a handle (compiler/handle_refs.py).
    held = Model(Model())
    assert Model(scale=[double]).init_kwargs["scale"] == [double]
    assert isinstance(held.init_args[0], ModelInstance)
    # Classes, methods and chains are not deployments: still refused, saying what may be held.
    with pytest.raises(GraphError, match=r"Model 'Model' got <dagserve model class 'Model'> as a constructor argument; a model can hold a model instance or function node"):
        Model(Model)
    with pytest.raises(GraphError, match=r"got <dagserve method 'Model.predict'> as a constructor argument"):
        Model(Model().predict)


def test_batched_node_takes_one_positional_argument() -> None:
    b = Batched()
    with dagserve.Input() as inp:
        b(inp)
        with pytest.raises(GraphError, match=r"Node 'Batched' is batched \(max_batch_size=4\) and takes exactly one positional argument per request, got 2 positional and 0 keyword"):
            b(inp, inp)
        with pytest.raises(GraphError, match=r"got 0 positional and 1 keyword"):
            b(xs=inp)


def test_selection_on_any_node() -> None:
    with dagserve.Input() as inp:
        n = double(inp)
        assert isinstance(n[0], SelectNode) and n[0].key == 0
        assert inp["a"]["b"].parent.key == "a"
        with pytest.raises(GraphError, match="got a node as the key"):
            inp[n]
        with pytest.raises(GraphError, match="does not take slices"):
            inp[1:2]


def test_lazy_nodes_refuse_truth_and_iteration() -> None:
    with dagserve.Input() as inp:
        with pytest.raises(GraphError, match=r"truth is unknown.*dagserve\.switch"):
            bool(inp)
        with pytest.raises(GraphError, match=r"cannot be iterated or unpacked"):
            a, b = inp


def test_rshift_between_functions_instances_and_nodes() -> None:
    m = Model(2)
    chain = double >> m >> add
    assert isinstance(chain, Chain) and len(chain.stages) == 3
    with dagserve.Input() as inp:
        out = inp >> double >> m
    assert isinstance(out, CallNode) and out.target is m
    assert out.args[0].target is double
    longer = chain >> double
    assert len(longer.stages) == 4
    assert len((double >> (m >> add)).stages) == 3
    assert isinstance(m.predict >> double, Chain)


def test_rshift_errors() -> None:
    with dagserve.Input() as inp:
        with pytest.raises(GraphError, match=r"Model is a model class; create an instance first"):
            inp >> Model
        with pytest.raises(GraphError, match=r"needs a step on its right.*got the node"):
            inp >> inp
        with pytest.raises(GraphError, match=r"plain callable 'len'; decorate it with @dagserve\.node"):
            inp >> len
        with pytest.raises(GraphError, match=r"got the node .* on its right"):
            double >> inp


def test_decorator_errors() -> None:
    with pytest.raises(GraphError, match="already a dagserve node"):
        dagserve.node(double)
    with pytest.raises(GraphError, match="decorates a function or a class"):
        dagserve.node(42)


def test_input_schema_must_be_pydantic() -> None:
    with pytest.raises(GraphError, match=r"Input\(schema=\.\.\.\) takes a pydantic BaseModel subclass, got <class 'dict'>"):
        dagserve.Input(schema=dict)

    class Req(BaseModel):
        x: int

    assert dagserve.Input(schema=Req).schema is Req


def test_input_context_cannot_be_entered_twice() -> None:
    inp = dagserve.Input()
    with inp, pytest.raises(GraphError, match="already open"):
        with inp:
            pass


def test_switch_and_split_validation() -> None:
    with dagserve.Input() as inp:
        sw = dagserve.switch(inp["k"], {"a": double(inp["x"]), "b": 3}, default=0)
        assert isinstance(sw, SwitchNode) and sw.has_default
        with pytest.raises(GraphError, match="needs a graph node as its key"):
            dagserve.switch("a", {"a": inp})
        with pytest.raises(GraphError, match="non-empty dict"):
            dagserve.switch(inp, {})
        sp = dagserve.split({"stable": double(inp), "canary": add(inp)}, {"stable": 90, "canary": 10})
        assert isinstance(sp, SplitNode) and sp.weights == {"stable": 0.9, "canary": 0.1}
        assert dagserve.split({"a": 1, "b": 2}, [1, 3], key=inp["user"]).weights == {"a": 0.25, "b": 0.75}
        # KServe's one-step splitter: one branch, weight 100 (issue 18).
        assert dagserve.split({"a": inp}, {"a": 100}).weights == {"a": 1.0}
        with pytest.raises(GraphError, match="needs a dict of named branches"):
            dagserve.split({}, [])
        with pytest.raises(GraphError, match=r"weights name \['a', 'c'\] but the branches are \['a', 'b'\]"):
            dagserve.split({"a": inp, "b": inp}, {"a": 1, "c": 1})
        with pytest.raises(GraphError, match="got 1 weights for 2 branches"):
            dagserve.split({"a": inp, "b": inp}, [1])
        with pytest.raises(GraphError, match=r"weight for 'b' must be a number >= 0, got -1"):
            dagserve.split({"a": inp, "b": inp}, [1, -1])
        with pytest.raises(GraphError, match="add up to 0"):
            dagserve.split({"a": inp, "b": inp}, [0, 0])
        with pytest.raises(GraphError, match=r"split\(key=\.\.\.\) takes a graph node"):
            dagserve.split({"a": inp, "b": inp}, [1, 1], key="user")
        with pytest.raises(GraphError, match=r"split\(seed=\.\.\.\) takes an int, got '7'"):
            dagserve.split({"a": inp, "b": inp}, [1, 1], seed="7")  # type: ignore[arg-type]


def test_graph_outputs_and_names() -> None:
    with dagserve.Input() as inp:
        g = dagserve.Graph({"a": double(inp), "b": [add(inp), 1]}, name="multi")
    assert g.name == "multi" and len(g.nodes()) == 3
    chain_graph = dagserve.Graph(double >> add, name="chain")
    assert chain_graph.output.target is add
    with pytest.raises(GraphError, match=r"Graph name 'bad name' is not usable"):
        dagserve.Graph(chain_graph.output, name="bad name")
    with pytest.raises(GraphError, match="got only constants"):
        dagserve.Graph({"a": 1})
    with pytest.raises(GraphError, match="got the model class Model"):
        dagserve.Graph(Model)
