"""The graph model: lazy nodes built with ordinary Python.

Nothing here runs user code or knows about any backend. Calling a decorated function or model
instance records a :class:`CallNode`; ``x[key]`` records a :class:`SelectNode`; ``switch`` and
``split`` (``routing.py``) record routing nodes; ``Graph`` (``graph.py``) names an output. The compiler turns the result into a :class:`~dagserve.Plan`.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from dagserve._errors import GraphError
from dagserve._options import NodeOptions, make_options
from dagserve.graph.loaders import loader_of, take_model_id

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "MISSING",
    "CallNode",
    "Chain",
    "FunctionNode",
    "Input",
    "ModelClass",
    "ModelInstance",
    "ModelMethod",
    "Node",
    "SelectNode",
    "Stage",
    "node",
    "nodes_in",
    "walk",
]

#: A default that was not given (``None`` is a valid default).
MISSING: Any = object()
_active_input: contextvars.ContextVar[Input | None] = contextvars.ContextVar("dagserve_input", default=None)

F = TypeVar("F", bound=Callable[..., Any])
#: ``Stage.map``: set by graph/composition.py, which builds on this module.
map_stage: Callable[..., Node] | None = None


# --------------------------------------------------------------------------------------------
# Nodes: lazy values in a graph
# --------------------------------------------------------------------------------------------


class Node:
    """A lazy value in a graph: the payload, a node's output, a selection or a routing result."""

    __slots__ = ("__weakref__",)

    def __init__(self) -> None:
        active = _active_input.get()
        if active is not None and not isinstance(self, Input):
            active._created.append(self)

    # -- structure -------------------------------------------------------------------------
    def dependencies(self) -> tuple[Node, ...]:
        """Nodes whose values this node needs (in argument order)."""
        return ()

    def describe(self) -> str:
        """A short human description used in error messages before names are assigned."""
        return type(self).__name__

    # -- building --------------------------------------------------------------------------
    def __getitem__(self, key: Hashable) -> SelectNode:
        return SelectNode(self, key)

    def __rshift__(self, stage: Any) -> Node:
        return _apply_stage(stage, self)

    def __iter__(self) -> Iterator[Any]:
        raise GraphError(
            f"{self.describe()} is a lazy graph node and cannot be iterated or unpacked while the "
            "graph is being built; select parts with node[0], node['key'] instead."
        )

    def __bool__(self) -> bool:
        raise GraphError(
            f"{self.describe()} is a lazy graph node; its truth is unknown while the graph is being "
            "built. Branch on a value with dagserve.switch(node, {...}) instead of `if`."
        )

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


class Input(Node):
    """Stands for the request payload.

    Use it as a context manager; nodes built inside belong to it, which lets the compiler report
    nodes that were built but never reach the graph's output::

        with dagserve.Input(schema=Request) as inp:
            out = classify(inp["text"])
        graph = dagserve.Graph(out, name="classify")

    With a pydantic ``schema`` the payload is validated before any node runs, and node functions
    receive the validated model instance.
    """

    __slots__ = ("_created", "_token", "schema")

    def __init__(self, schema: type[BaseModel] | None = None) -> None:
        super().__init__()
        if schema is not None and not _is_pydantic_model(schema):
            raise GraphError(
                f"Input(schema=...) takes a pydantic BaseModel subclass, got {schema!r}. "
                "Define `class Request(BaseModel): ...` and pass Input(schema=Request)."
            )
        self.schema = schema
        self._created: list[Node] = []
        self._token: contextvars.Token[Input | None] | None = None

    def __enter__(self) -> Input:
        if self._token is not None:
            raise GraphError("This Input is already open in a `with` block; open it once.")
        self._token = _active_input.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None  # set by __enter__; not user input
        _active_input.reset(self._token)
        self._token = None

    def describe(self) -> str:
        return "Input" if self.schema is None else f"Input[{self.schema.__name__}]"


class CallNode(Node):
    """A call of a function node or of a model instance's method."""

    __slots__ = ("args", "kwargs", "method", "model_id", "target")

    def __init__(
        self,
        target: FunctionNode | ModelInstance,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        model_id: Any = None,
    ) -> None:
        super().__init__()
        self.target = target
        self.method = method
        self.args = args
        self.kwargs = kwargs
        #: A multiplexed node's model id for this call: a node or a constant (``None``: not multiplexed).
        self.model_id = model_id

    def dependencies(self) -> tuple[Node, ...]:
        if self.model_id is None:
            return tuple(nodes_in((self.args, self.kwargs)))
        return tuple(dict.fromkeys(nodes_in((self.args, self.kwargs, self.model_id))))

    def callable(self) -> Callable[..., Any]:
        """The user function or unbound method this node calls."""
        if isinstance(self.target, FunctionNode):
            return self.target.fn
        return getattr(self.target.model.cls, self.method)

    def describe(self) -> str:
        return self.target.call_label(self.method)


class SelectNode(Node):
    """``parent[key]``: part of a payload or of a node's output (dict, sequence or pydantic model)."""

    __slots__ = ("key", "parent")

    def __init__(self, parent: Node, key: Hashable) -> None:
        super().__init__()
        if isinstance(key, Node):
            raise GraphError(
                f"{parent.describe()}[...] got a node as the key; keys are constants. "
                "Use dagserve.switch to choose by a computed value."
            )
        if isinstance(key, slice):
            raise GraphError(f"{parent.describe()}[...] does not take slices; select one key or index.")
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise GraphError(f"{parent.describe()}[{key!r}]: keys are str (a field) or int (a position), got {type(key).__name__}.")
        self.parent = parent
        self.key = key

    def dependencies(self) -> tuple[Node, ...]:
        return (self.parent,)

    def describe(self) -> str:
        return f"{self.parent.describe()}[{self.key!r}]"


# --------------------------------------------------------------------------------------------
# What the decorator returns: function nodes, model classes and their instances
# --------------------------------------------------------------------------------------------


class Stage:
    """Something that can be applied to a node: a function node, a model instance, a method."""

    def __call__(self, *args: Any, **kwargs: Any) -> Node:  # pragma: no cover - overridden
        raise NotImplementedError

    def __rshift__(self, stage: Any) -> Chain:
        return Chain(self, stage)

    def __rrshift__(self, left: Any) -> Any:
        if isinstance(left, Node):
            return self(left)
        return Chain(left, self)

    def map(self, items: Any, *args: Any, **kwargs: Any) -> Node:
        """``dagserve.map(self, items, ...)``: this step on every item of a list (docs/graphs.md)."""
        assert map_stage is not None  # set when dagserve.graph is imported
        return map_stage(self, items, *args, **kwargs)


class FunctionNode(Stage, Generic[F]):
    """A business-logic node: a plain (sync or async) function, deployed as its own deployment.

    Calling it with nodes and/or constants records a call in the graph. The undecorated function
    stays available as ``.fn`` for unit tests.
    """

    def __init__(self, fn: F, options: NodeOptions) -> None:
        self.fn = fn
        self._options = options
        self.signature = inspect.signature(fn)
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self._options.name or self.fn.__name__

    @property
    def node_options(self) -> NodeOptions:
        """The options in force for this node."""
        return self._options

    def options(self, **overrides: Any) -> FunctionNode[F]:
        """A copy with changed options (a separate deployment), e.g. ``f.options(num_replicas=2)``."""
        return FunctionNode(self.fn, make_options(self.name, self._options, **overrides))

    def call_label(self, method: str) -> str:
        return self.name

    def __call__(self, *args: Any, **kwargs: Any) -> CallNode:
        _check_call(self.name, self.signature, args, kwargs, self._options, bound=False)
        return CallNode(self, "__call__", args, kwargs)

    def __repr__(self) -> str:
        return f"<dagserve function node {self.name!r}>"


class ModelClass(Stage):
    """A model node's class: calling it with constructor arguments gives a :class:`ModelInstance`.

    ``__init__`` runs once per replica, so load weights there. The undecorated class is ``.cls``.
    """

    def __init__(self, cls: type, options: NodeOptions) -> None:
        self.cls = cls
        self._options = options
        functools.update_wrapper(self, cls, updated=())  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self._options.name or self.cls.__name__

    @property
    def node_options(self) -> NodeOptions:
        return self._options

    def options(self, **overrides: Any) -> ModelClass:
        """A copy of the class declaration with changed options."""
        return ModelClass(self.cls, make_options(self.name, self._options, **overrides))

    def __call__(self, *args: Any, **kwargs: Any) -> ModelInstance:  # type: ignore[override]
        for value in walk((args, kwargs)):
            if isinstance(value, Node):
                raise GraphError(
                    f"Model {self.name!r} got a graph node ({value.describe()}) as a constructor "
                    "argument; constructor arguments are constants loaded once per replica. "
                    "Pass per-request values when calling the instance: model(x)."
                )
            # A model instance or function node is a handle (compiler/handle_refs.py); not the rest.
            if isinstance(value, (Stage, ModelClass)) and not isinstance(value, (ModelInstance, FunctionNode)):
                raise GraphError(
                    f"Model {self.name!r} got {value!r} as a constructor argument; a model can hold a "
                    "model instance or function node (it gets a handle to call), not a class, method or "
                    "chain. Pass the instance itself, e.g. Outer(inner=Inner())."
                )
        try:
            inspect.signature(self.cls).bind(*args, **kwargs)
        except TypeError as exc:
            raise GraphError(f"Model {self.name!r} cannot be constructed with these arguments: {exc}.") from None
        return ModelInstance(self, args, kwargs, self._options)

    def __rshift__(self, stage: Any) -> Chain:
        raise GraphError(
            f"{self.name} is a model class; create an instance first: {self.name}(...) >> next_step."
        )

    __rrshift__ = __rshift__

    def __repr__(self) -> str:
        return f"<dagserve model class {self.name!r}>"


class ModelInstance(Stage):
    """One configured model: one deployment, however many places in the graph call it."""

    def __init__(self, model: ModelClass, init_args: tuple[Any, ...], init_kwargs: dict[str, Any], options: NodeOptions) -> None:
        self.model = model
        self.init_args = init_args
        self.init_kwargs = init_kwargs
        self._options = options

    @property
    def name(self) -> str:
        return self._options.name or self.model.cls.__name__

    @property
    def node_options(self) -> NodeOptions:
        return self._options

    def options(self, **overrides: Any) -> ModelInstance:
        """A copy with changed options; it is a separate deployment."""
        return ModelInstance(self.model, self.init_args, self.init_kwargs, make_options(self.name, self._options, **overrides))

    def call_label(self, method: str) -> str:
        return self.name if method == "__call__" else f"{self.name}.{method}"

    def _method(self, method: str) -> Callable[..., Any]:
        fn = getattr(self.model.cls, method, None)
        if fn is None or not callable(fn):
            public = sorted(m for m in dir(self.model.cls) if not m.startswith("_") and callable(getattr(self.model.cls, m)))
            raise GraphError(
                f"Model {self.name!r} has no method {method!r}. Its public methods: {public or 'none'}."
            )
        return fn

    def __call__(self, *args: Any, **kwargs: Any) -> CallNode:
        if "__call__" not in vars_chain(self.model.cls):
            raise GraphError(
                f"Model {self.name!r} defines no __call__; call one of its methods instead, "
                f"e.g. {self.name.lower()}.predict(x)."
            )
        return ModelMethod(self, "__call__")(*args, **kwargs)

    def __getattr__(self, method: str) -> ModelMethod:
        # Only methods the class really defines become graph calls; anything else is an error.
        if method.startswith("_"):
            raise AttributeError(method)
        self._method(method)
        return ModelMethod(self, method)

    def __repr__(self) -> str:
        return f"<dagserve model instance {self.name!r}>"


class ModelMethod(Stage):
    """``instance.method``: calling it records a call on the instance's deployment."""

    def __init__(self, instance: ModelInstance, method: str) -> None:
        self.instance = instance
        self.method = method

    def __call__(self, *args: Any, **kwargs: Any) -> CallNode:
        fn = self.instance._method(self.method)
        model_id = None
        if loader_of(self.instance.model.cls) is not None:  # multiplexed: model_id= is dagserve's
            label = self.instance.call_label(self.method)
            model_id, kwargs = take_model_id(label, fn, kwargs, isinstance(kwargs.get("model_id"), Node))
        _check_call(
            self.instance.call_label(self.method),
            inspect.signature(fn),
            args,
            kwargs,
            self.instance.node_options,
            bound=True,
        )
        return CallNode(self.instance, self.method, args, kwargs, model_id)

    def __repr__(self) -> str:
        return f"<dagserve method {self.instance.call_label(self.method)!r}>"


def vars_chain(cls: type) -> set[str]:
    """Names defined on ``cls`` or its bases, excluding ``object``."""
    names: set[str] = set()
    for base in cls.__mro__[:-1]:
        names.update(vars(base))
    return names


class Chain(Stage):
    """``a >> b >> c``: stages applied in order; applying the chain to a node gives a node."""

    def __init__(self, *stages: Any) -> None:
        flat: list[Any] = []
        for stage in stages:
            if isinstance(stage, Chain):
                flat.extend(stage.stages)
            elif isinstance(stage, Node):
                raise GraphError(
                    f"`>>` joins steps (decorated functions, model instances, methods), but got the "
                    f"node {stage.describe()} on its right. Start a chain from a node instead: node >> step."
                )
            elif not callable(stage):
                raise GraphError(f"`>>` cannot use {stage!r}: it is not a dagserve node, model instance or function.")
            else:
                flat.append(stage)
        self.stages = tuple(flat)

    def __call__(self, value: Any) -> Node:  # type: ignore[override]
        for stage in self.stages:
            value = _apply_stage(stage, value)
        return value

    def __repr__(self) -> str:
        return " >> ".join(getattr(s, "name", repr(s)) for s in self.stages)


def _apply_stage(stage: Any, value: Any) -> Node:
    if isinstance(stage, ModelClass):
        raise GraphError(
            f"{stage.name} is a model class; create an instance first: node >> {stage.name}(...)."
        )
    if isinstance(stage, Node):
        raise GraphError(
            f"`>>` needs a step on its right (a decorated function, model instance or method), got the "
            f"node {stage.describe()}."
        )
    if isinstance(stage, (Stage, Chain)):
        out = stage(value)
    elif callable(stage):
        raise GraphError(
            f"`>>` got the plain callable {getattr(stage, '__name__', stage)!r}; decorate it with "
            "@dagserve.node so it becomes a node of the graph."
        )
    else:
        raise GraphError(f"`>>` cannot use {stage!r}: it is not a dagserve node, model instance or function.")
    if not isinstance(out, Node):
        raise GraphError(f"{stage!r} did not produce a graph node when applied in a `>>` chain.")
    return out


# --------------------------------------------------------------------------------------------
# The decorator
# --------------------------------------------------------------------------------------------


@overload
def node(target: type, /) -> ModelClass: ...
@overload
def node(target: F, /) -> FunctionNode[F]: ...
@overload
def node(target: None = None, /, **options: Any) -> Callable[[Any], Any]: ...


def node(target: Any = None, /, **options: Any) -> Any:
    """Declare a graph node, bare or with options.

    On a function, a business-logic node; on a class, a model node whose ``__init__`` runs once per
    replica::

        @dagserve.node
        def clean(text: str) -> str:
            return text.strip().lower()

        @dagserve.node(num_replicas=2, max_batch_size=16, num_gpus=0.25)
        class Classifier:
            def __init__(self, vocab: list[str]) -> None:
                self.vocab = vocab          # load weights here

            async def __call__(self, texts: list[str]) -> list[str]:
                return [...]                # batched: a list in, a list out
    """

    def wrap(obj: Any) -> Any:
        owner = getattr(obj, "__name__", repr(obj))
        opts = make_options(owner, None, **options)
        if isinstance(obj, (FunctionNode, ModelClass)):
            raise GraphError(f"{owner!r} is already a dagserve node; use .options(...) to change its options.")
        if inspect.isclass(obj):
            return ModelClass(obj, opts)
        if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
            return FunctionNode(obj, opts)
        raise GraphError(f"@dagserve.node decorates a function or a class, not {obj!r}.")

    if target is None:
        return wrap
    if options:
        raise GraphError("Use @dagserve.node(...) with keyword options only, or @dagserve.node bare.")
    return wrap(target)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _is_pydantic_model(obj: Any) -> bool:
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover - pydantic is a dependency
        return False
    return inspect.isclass(obj) and issubclass(obj, BaseModel)


def walk(value: Any) -> Iterator[Any]:
    """Every leaf in nested lists/tuples/dicts (dict keys are not walked)."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from walk(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    else:
        yield value


def nodes_in(value: Any) -> Iterator[Node]:
    for leaf in walk(value):
        if isinstance(leaf, Node):
            yield leaf


def _check_call(
    label: str,
    signature: inspect.Signature,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: NodeOptions,
    *,
    bound: bool,
) -> None:
    if options.max_batch_size is not None and (kwargs or len(args) != 1):
        raise GraphError(
            f"Node {label!r} is batched (max_batch_size={options.max_batch_size}) and takes exactly one "
            f"positional argument per request, got {len(args)} positional and {len(kwargs)} keyword. "
            "Pack several values into one, e.g. node({'a': a, 'b': b})."
        )
    try:
        if bound:
            signature.bind(None, *args, **kwargs)
        else:
            signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise GraphError(f"Node {label!r} cannot be called with these arguments: {exc}.") from None
