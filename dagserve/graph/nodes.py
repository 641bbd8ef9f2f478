"""The graph model: lazy nodes built with ordinary Python.

Nothing here runs user code or knows about any backend. Calling a decorated function or model
instance records a :class:`CallNode`; ``x[key]`` records a :class:`SelectNode`; ``switch`` and
``split`` record routing nodes. The compiler turns the result into a :class:`~dagserve.Plan`.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from dagserve._errors import GraphError, GraphvizNotFoundError
from dagserve._hooks import hooks
from dagserve._options import NodeOptions, make_options

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic import BaseModel

__all__ = [
    "CallNode",
    "Chain",
    "FunctionNode",
    "Graph",
    "Input",
    "ModelClass",
    "ModelInstance",
    "ModelMethod",
    "Node",
    "SelectNode",
    "SplitNode",
    "SwitchNode",
    "node",
    "split",
    "switch",
]

_MISSING: Any = object()
_active_input: contextvars.ContextVar[Input | None] = contextvars.ContextVar("dagserve_input", default=None)

F = TypeVar("F", bound=Callable[..., Any])


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

    __slots__ = ("args", "kwargs", "method", "target")

    def __init__(self, target: FunctionNode | ModelInstance, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.target = target
        self.method = method
        self.args = args
        self.kwargs = kwargs

    def dependencies(self) -> tuple[Node, ...]:
        return tuple(_nodes_in((self.args, self.kwargs)))

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
        self.parent = parent
        self.key = key

    def dependencies(self) -> tuple[Node, ...]:
        return (self.parent,)

    def describe(self) -> str:
        return f"{self.parent.describe()}[{self.key!r}]"


class SwitchNode(Node):
    """Routes on ``key``'s value; only the chosen case's nodes run."""

    __slots__ = ("cases", "default", "key", "name")

    def __init__(self, key: Node, cases: dict[Hashable, Any], default: Any, name: str | None) -> None:
        super().__init__()
        self.key = key
        self.cases = cases
        self.default = default
        self.name = name

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING

    def dependencies(self) -> tuple[Node, ...]:
        branches = list(self.cases.values()) + ([self.default] if self.has_default else [])
        return (self.key, *_nodes_in(branches))

    def describe(self) -> str:
        return f"switch({self.key.describe()})"


class SplitNode(Node):
    """Weighted routing between branches: random per request, or sticky by ``key``."""

    __slots__ = ("branches", "key", "name", "seed", "weights")

    def __init__(
        self,
        branches: dict[str, Any],
        weights: dict[str, float],
        key: Node | None,
        seed: int | None,
        name: str | None,
    ) -> None:
        super().__init__()
        self.branches = branches
        self.weights = weights
        self.key = key
        self.seed = seed
        self.name = name

    def dependencies(self) -> tuple[Node, ...]:
        keyed = (self.key,) if self.key is not None else ()
        return (*keyed, *_nodes_in(list(self.branches.values())))

    def describe(self) -> str:
        return "split(" + ", ".join(f"{k}={w:g}" for k, w in self.weights.items()) + ")"


# --------------------------------------------------------------------------------------------
# What the decorator returns: function nodes, model classes and their instances
# --------------------------------------------------------------------------------------------


class _Stage:
    """Something that can be applied to a node: a function node, a model instance, a method."""

    def __call__(self, *args: Any, **kwargs: Any) -> Node:  # pragma: no cover - overridden
        raise NotImplementedError

    def __rshift__(self, stage: Any) -> Chain:
        return Chain(self, stage)

    def __rrshift__(self, left: Any) -> Any:
        if isinstance(left, Node):
            return self(left)
        return Chain(left, self)


class FunctionNode(_Stage, Generic[F]):
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


class ModelClass(_Stage):
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
        for value in _walk((args, kwargs)):
            if isinstance(value, Node):
                raise GraphError(
                    f"Model {self.name!r} got a graph node ({value.describe()}) as a constructor "
                    "argument; constructor arguments are constants loaded once per replica. "
                    "Pass per-request values when calling the instance: model(x)."
                )
            if isinstance(value, (_Stage, ModelClass)):
                raise GraphError(
                    f"Model {self.name!r} got {value!r} as a constructor argument; in dagserve, nodes do "
                    "not hold each other. Connect them in the graph instead: b(a(x)) or a >> b."
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


class ModelInstance(_Stage):
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


class ModelMethod(_Stage):
    """``instance.method``: calling it records a call on the instance's deployment."""

    def __init__(self, instance: ModelInstance, method: str) -> None:
        self.instance = instance
        self.method = method

    def __call__(self, *args: Any, **kwargs: Any) -> CallNode:
        fn = self.instance._method(self.method)
        _check_call(
            self.instance.call_label(self.method),
            inspect.signature(fn),
            args,
            kwargs,
            self.instance.node_options,
            bound=True,
        )
        return CallNode(self.instance, self.method, args, kwargs)

    def __repr__(self) -> str:
        return f"<dagserve method {self.instance.call_label(self.method)!r}>"


def vars_chain(cls: type) -> set[str]:
    """Names defined on ``cls`` or its bases, excluding ``object``."""
    names: set[str] = set()
    for base in cls.__mro__[:-1]:
        names.update(vars(base))
    return names


class Chain(_Stage):
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
    if isinstance(stage, (_Stage, Chain)):
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
# Routing
# --------------------------------------------------------------------------------------------


def switch(key: Node, cases: Mapping[Hashable, Any], default: Any = _MISSING, *, name: str | None = None) -> SwitchNode:
    """Route on ``key``'s value: the result is the chosen case's value.

    Only the chosen case runs: nodes that only other cases need are never executed::

        out = dagserve.switch(lang, {"en": english(text), "de": german(text)}, default=fallback(text))

    Without ``default``, a value that matches no case fails the request with
    :class:`~dagserve.NoRouteError` (HTTP 422).
    """
    if not isinstance(key, Node):
        raise GraphError(
            f"switch(key, ...) needs a graph node as its key (the value to route on), got {key!r}."
        )
    if not isinstance(cases, Mapping) or not cases:
        raise GraphError("switch(key, cases) needs a non-empty dict mapping each value to a branch.")
    for k in cases:
        if isinstance(k, Node):
            raise GraphError("switch cases are keyed by constant values, not nodes.")
    return SwitchNode(key, dict(cases), default, name)


def split(
    branches: Mapping[str, Any],
    weights: Mapping[str, float] | Sequence[float],
    *,
    key: Node | None = None,
    seed: int | None = None,
    name: str | None = None,
) -> SplitNode:
    """Weighted routing between branches (canary, A/B); only the chosen branch runs.

    ``weights`` are relative (90/10 and 0.9/0.1 mean the same). Without ``key`` each request is
    routed at random; with ``key`` (e.g. ``inp["user_id"]``) the choice is sticky: a stable hash of
    the key's value, so one user always sees the same branch. ``seed`` (an int) makes the random
    choice reproducible: the n-th request reaching the split in an App takes the same branch in
    every deployment with that seed; with ``key`` it salts the hash, so experiments with other
    seeds bucket users independently (docs/graphs.md)::

        out = dagserve.split({"stable": v1(x), "canary": v2(x)}, {"stable": 90, "canary": 10})
    """
    if not isinstance(branches, Mapping) or len(branches) < 2:
        raise GraphError("split(branches, weights) needs a dict of at least two named branches.")
    labels = list(branches)
    for label in labels:
        if not isinstance(label, str) or not label:
            raise GraphError(f"split branch labels are non-empty strings, got {label!r}.")
    if isinstance(weights, Mapping):
        if set(weights) != set(labels):
            raise GraphError(
                f"split weights name {sorted(weights)!r} but the branches are {sorted(labels)!r}; "
                "give one weight per branch."
            )
        raw = {label: weights[label] for label in labels}
    else:
        weights = list(weights)
        if len(weights) != len(labels):
            raise GraphError(f"split got {len(weights)} weights for {len(labels)} branches; give one per branch.")
        raw = dict(zip(labels, weights, strict=True))
    for label, w in raw.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or w != w:
            raise GraphError(f"split weight for {label!r} must be a number >= 0, got {w!r}.")
    total = float(sum(raw.values()))
    if total <= 0:
        raise GraphError("split weights add up to 0; give at least one branch a positive weight.")
    if key is not None and not isinstance(key, Node):
        raise GraphError(f"split(key=...) takes a graph node such as inp['user_id'], got {key!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise GraphError(f"split(seed=...) takes an int, got {seed!r}.")
    return SplitNode(dict(branches), {k: v / total for k, v in raw.items()}, key, seed, name)


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------


class Graph:
    """An inference graph: its output (a node, a ``>>`` chain, or a dict/list/tuple of nodes).

    ::

        with dagserve.Input() as inp:
            graph = dagserve.Graph({"label": classify(inp["text"])}, name="classify")

        graph = dagserve.Graph(clean >> Classifier(vocab) >> respond, name="pipeline")
    """

    def __init__(self, output: Any, *, name: str = "default", description: str | None = None) -> None:
        import re

        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", name):
            raise GraphError(
                f"Graph name {name!r} is not usable in URLs and deployment names; use letters, digits, "
                "'_', '-' and '.', at most 64 characters."
            )
        if isinstance(output, (Chain, _Stage)) and not isinstance(output, ModelClass):
            output = output(Input())
        elif isinstance(output, ModelClass):
            raise GraphError(f"Graph(...) got the model class {output.name}; create an instance and call it.")
        if not any(isinstance(v, Node) for v in _walk(output)):
            raise GraphError(
                "Graph(output) needs graph nodes in its output, got only constants; build nodes from "
                "`with dagserve.Input() as inp:`."
            )
        self.output = output
        self.name = name
        self.description = description

    def nodes(self) -> list[Node]:
        """Every node reachable from the output, dependencies first."""
        seen: dict[int, Node] = {}
        stack: list[tuple[Node, bool]] = [(n, False) for n in reversed(list(_nodes_in(self.output)))]
        order: list[Node] = []
        while stack:
            n, expanded = stack.pop()
            if expanded:
                order.append(n)
                continue
            if id(n) in seen:
                continue
            seen[id(n)] = n
            stack.append((n, True))
            stack.extend((d, False) for d in reversed(n.dependencies()) if id(d) not in seen)
        return order

    # Rendering lives in dagserve/render.py, a layer above this one: reached through its hooks.
    def to_dot(self, **kwargs: Any) -> str:
        """DOT source of the diagram (deterministic: the same graph gives the same text)."""
        return hooks.need("to_dot")(self, **kwargs)  # type: ignore[no-any-return]

    def render(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the diagram to ``path``: SVG, PNG or PDF by its suffix, DOT source for ``.dot``."""
        return hooks.need("render")(self, path, **kwargs)  # type: ignore[no-any-return]

    def _repr_svg_(self) -> str | None:
        """Notebook display; ``None`` (Jupyter falls back to the text repr) without ``dot``."""
        try:
            return hooks.need("to_svg")(self)  # type: ignore[no-any-return]
        except GraphvizNotFoundError:
            return None

    def __repr__(self) -> str:
        return f"<dagserve.Graph {self.name!r}>"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _is_pydantic_model(obj: Any) -> bool:
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover - pydantic is a dependency
        return False
    return inspect.isclass(obj) and issubclass(obj, BaseModel)


def _walk(value: Any) -> Iterator[Any]:
    """Every leaf in nested lists/tuples/dicts (dict keys are not walked)."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    else:
        yield value


def _nodes_in(value: Any) -> Iterator[Node]:
    for leaf in _walk(value):
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
