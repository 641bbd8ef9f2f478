"""A graph as an OIP model: its input and output tensors, a request's tensors as the graph's
payload, and the graph's output as tensors.

Inputs come from the ``Input`` schema's fields: a field annotated with a
:class:`~dagserve.graph.tensors.TensorSpec` is that tensor; a plain ``str``, ``bytes``,
``int``, ``float`` or ``bool`` field a one-element ``BYTES``, ``BYTES``, ``INT64``, ``FP64`` or
``BOOL`` tensor (the node gets the scalar); a ``list`` of those a 1-D tensor (the node gets a
list). Outputs come from the graph's output: the keys of a dict (or the fields of a model) each
a tensor, anything else one tensor named ``output``. A graph without a schema takes any
tensors, each given to it as a numpy array.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dagserve._errors import TensorError
from dagserve.compiler.plan import Plan, Ref
from dagserve.graph.tensors import SCALAR_DATATYPES, TensorSpec, tensor_spec_of
from dagserve.oip.codec import OutputTensorError, to_array

__all__ = ["ModelSignature", "TensorField", "signature"]

#: The name of the one output tensor of a graph whose output is not a dict or a model.
SINGLE_OUTPUT = "output"


@dataclass(frozen=True)
class TensorField:
    """One input or output tensor of a model: how it is described and how its value is read.

    ``kind``: ``"tensor"`` (a numpy array), ``"scalar"`` (one element, given as ``scalar``) or
    ``"list"`` (a 1-D tensor given as a list of ``scalar``). ``datatype`` ``None``: any.
    """

    name: str
    datatype: str | None
    shape: tuple[int, ...]
    kind: str = "tensor"
    scalar: type | None = None
    required: bool = True

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype or "BYTES", "shape": list(self.shape)}

    def read(self, array: Any, datatype: str) -> Any:
        """The value a node gets for ``array`` (a decoded tensor of ``datatype``); checks it fits."""
        if self.datatype is not None and datatype != self.datatype:
            raise TensorError(f"Input {self.name!r} has datatype {datatype}; it takes {self.datatype}.", input=self.name)
        if self.kind == "tensor":
            if self.datatype is not None and not TensorSpec(self.datatype, self.shape).matches(array.shape):
                raise TensorError(
                    f"Input {self.name!r} has shape {list(array.shape)}; it takes shape {list(self.shape)} (-1: any size).",
                    input=self.name,
                )
            return array
        if self.kind == "scalar":
            if array.size != 1:
                raise TensorError(
                    f"Input {self.name!r} has shape {list(array.shape)}; it takes one element (shape [1]).", input=self.name
                )
            return self._item(array.reshape(-1)[0])
        if array.ndim != 1:
            raise TensorError(f"Input {self.name!r} has shape {list(array.shape)}; it takes a 1-D tensor (shape [-1]).", input=self.name)
        return [self._item(v) for v in array]

    def _item(self, value: Any) -> Any:
        if self.scalar is str:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise TensorError(f"Input {self.name!r} takes text; its bytes are not UTF-8.", input=self.name) from None
        if self.scalar is bytes:
            return bytes(value)
        return value.item()


@dataclass(frozen=True)
class ModelSignature:
    """The tensors a graph takes and gives (``inputs`` ``None``: any, the graph has no schema).

    ``single_output``: the output is one tensor named ``output`` (``True``), tensors named by
    its keys (``False``), or, when its type is not declared, by what it is (``None``: a dict or
    a model gives named tensors, anything else ``output``).
    """

    inputs: Mapping[str, TensorField] | None
    outputs: tuple[TensorField, ...]
    single_output: bool | None

    @functools.cached_property
    def _declared(self) -> dict[str, str | None]:
        return {f.name: f.datatype for f in self.outputs}

    def payload(self, tensors: list[tuple[str, str, Any]]) -> dict[str, Any]:
        """The graph's payload from ``(name, datatype, array)`` tensors; :class:`TensorError`
        names an unknown, repeated, missing or unfitting input."""
        payload: dict[str, Any] = {}
        for name, datatype, array in tensors:
            if name in payload:
                raise TensorError(f"Input {name!r} is sent twice; send each input once.", input=name)
            if self.inputs is None:
                payload[name] = array
                continue
            field = self.inputs.get(name)
            if field is None:
                raise TensorError(f"The model has no input {name!r}; its inputs are {sorted(self.inputs)}.", input=name)
            payload[name] = field.read(array, datatype)
        if self.inputs is not None:
            missing = [n for n, f in self.inputs.items() if f.required and n not in payload]
            if missing:
                raise TensorError(
                    f"The request lacks input {missing[0]!r}" + (f" (and {missing[1:]})" if missing[1:] else "")
                    + f"; the model's inputs are {sorted(self.inputs)}.",
                    input=missing[0],
                )
        return payload

    def outputs_of(self, result: Any, wanted: list[str] | None = None) -> list[tuple[str, Any]]:
        """``(name, array)`` per output tensor of ``result``, only ``wanted`` ones when given."""
        declared = self._declared
        values = None if self.single_output else _fields(result)
        if values is None:
            if self.single_output is None or self.single_output:
                values = {SINGLE_OUTPUT: result}
            else:
                raise OutputTensorError(
                    f"The graph's output is a {type(result).__name__}; its model lists named outputs "
                    f"{sorted(declared)}, so it must return a dict (or a model) with those keys."
                )
        if wanted is not None:
            unknown = [n for n in wanted if n not in values]
            if unknown:
                raise TensorError(f"The model has no output {unknown[0]!r}; its outputs are {sorted(values)}.")
            values = {n: values[n] for n in wanted}
        return [(name, to_array(name, value, declared.get(name))) for name, value in values.items()]


def signature(plan: Plan) -> ModelSignature:
    """The OIP signature of ``plan``'s graph (derived once per graph by the doors)."""
    inputs = None if plan.input_schema is None else _input_fields(plan.input_schema)
    output = plan.output
    if isinstance(output, dict) and all(isinstance(k, str) for k in output):
        fields = tuple(_output_field(str(k), _annotation(plan, v)) for k, v in output.items())
        return ModelSignature(inputs, fields, single_output=False)
    annotation = _annotation(plan, output)
    model_fields = getattr(annotation, "model_fields", None)
    if isinstance(model_fields, dict):
        fields = tuple(_output_field(n, f.annotation) for n, f in model_fields.items())
        return ModelSignature(inputs, fields, single_output=False)
    if _undeclared(annotation):
        return ModelSignature(inputs, (), single_output=None)
    return ModelSignature(inputs, (_output_field(SINGLE_OUTPUT, annotation),), single_output=True)


def _undeclared(annotation: Any) -> bool:
    """No type, or a mapping or object type whose keys are not declared."""
    base = typing.get_origin(annotation) or annotation
    return annotation is None or annotation is Any or (isinstance(base, type) and issubclass(base, Mapping)) or base is object


def _input_fields(schema: Any) -> dict[str, TensorField]:
    out: dict[str, TensorField] = {}
    for name, info in schema.model_fields.items():
        annotation = info.annotation
        spec = tensor_spec_of(annotation)
        if spec is None and info.metadata:
            spec = next((m for m in info.metadata if isinstance(m, TensorSpec)), None)
        field = _field(name, annotation, spec)
        out[name] = dataclasses.replace(field, required=info.is_required())
    return out


def _field(name: str, annotation: Any, spec: TensorSpec | None) -> TensorField:
    if spec is not None:
        return TensorField(name, spec.datatype, spec.shape)
    base = _unoptional(annotation)
    if base in SCALAR_DATATYPES:
        return TensorField(name, SCALAR_DATATYPES[base], (1,), kind="scalar", scalar=base)
    args = typing.get_args(base)
    if typing.get_origin(base) is list and len(args) == 1 and args[0] in SCALAR_DATATYPES:
        return TensorField(name, SCALAR_DATATYPES[args[0]], (-1,), kind="list", scalar=args[0])
    return TensorField(name, None, (-1,))  # any tensor, given as a numpy array


def _output_field(name: str, annotation: Any) -> TensorField:
    field = _field(name, annotation, tensor_spec_of(annotation))
    return dataclasses.replace(field, kind="tensor")


def _unoptional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _annotation(plan: Plan, template: Any) -> Any:
    """The return annotation of the call step ``template`` stands for (``None``: unknown)."""
    if isinstance(template, Ref):
        step = plan.steps[template.index]
        if step.kind == "call":
            return _declared_return(plan, step) or step.returns
    return None


def _declared_return(plan: Plan, step: Any) -> Any:
    """The return annotation with its ``Annotated`` extras (the compiler's ``returns`` drops them)."""
    spec = next((d for d in plan.deployments if d.name == step.deployment), None)
    if spec is None:
        return None
    fn = spec.target if spec.kind == "function" else getattr(spec.target, step.method or "__call__", None)
    try:
        annotation = typing.get_type_hints(fn, include_extras=True).get("return")
    except Exception:  # unresolvable forward references: undeclared
        return None
    if step.streams:  # a generator node: its items' type
        args = typing.get_args(annotation)
        return args[0] if typing.get_origin(annotation) in _GENERATORS and args else None
    return annotation


_GENERATORS = (
    collections.abc.Iterator,
    collections.abc.Iterable,
    collections.abc.Generator,
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
)


def _fields(result: Any) -> dict[str, Any] | None:
    if isinstance(result, Mapping):
        return {str(k): v for k, v in result.items()}
    if hasattr(type(result), "model_fields"):
        return {name: getattr(result, name) for name in type(result).model_fields}
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    return None
