"""Tensors in a graph's types: ``Annotated[numpy.ndarray, TensorSpec("FP32", [-1, 4])]``.

A :class:`TensorSpec` on an ``Input`` schema field or on a node's return annotation declares a
tensor of the Open Inference Protocol (OIP, KServe "V2"): its datatype and its shape, ``-1``
for a dimension of any size. The OIP routes (REST and gRPC) describe the graph with it and
check requests against it; pydantic validation turns a JSON list into a numpy array of that
datatype and shape, so the JSON route takes the same field.

numpy is an optional extra (``pip install 'dagserve[tensors]'``): this module imports it only
when a value is validated, never when dagserve is imported.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dagserve._errors import GraphError, TensorError

__all__ = ["DATATYPES", "SCALAR_DATATYPES", "TensorSpec", "datatype_of_dtype", "numpy_module", "tensor_spec_of"]

#: OIP datatype -> numpy dtype name (BYTES: an object array of ``bytes``).
DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}

#: The datatype of the one-element tensor a plain scalar field takes.
SCALAR_DATATYPES: dict[type, str] = {bool: "BOOL", int: "INT64", float: "FP64", str: "BYTES", bytes: "BYTES"}


def numpy_module() -> Any:
    """numpy, or :class:`TensorError` saying how to install it."""
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is installed wherever the suite runs
        raise TensorError(
            "Tensors need numpy, which is not installed on the server: pip install 'dagserve[tensors]'."
        ) from None
    return numpy


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's OIP datatype and shape, for ``typing.Annotated``::

        class Request(BaseModel):
            pixels: Annotated[numpy.ndarray, dagserve.TensorSpec("FP32", [-1, 64])]

    Datatypes: ``BOOL``, ``UINT8`` ... ``UINT64``, ``INT8`` ... ``INT64``, ``FP16``, ``FP32``,
    ``FP64``, ``BYTES``; ``-1`` in ``shape`` is a dimension of any size. The node receives a
    numpy array of that dtype and shape.
    """

    datatype: str
    shape: tuple[int, ...]

    def __init__(self, datatype: str, shape: Sequence[int]) -> None:
        if not isinstance(datatype, str) or datatype.upper() not in DATATYPES:
            raise GraphError(f"TensorSpec datatype {datatype!r} is not an OIP datatype; use one of {', '.join(DATATYPES)}.")
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
            raise GraphError(f"TensorSpec shape must be a list of ints (-1 for any size), got {shape!r}.")
        dims = tuple(shape)
        if any(isinstance(d, bool) or not isinstance(d, int) or d < -1 for d in dims):
            raise GraphError(f"TensorSpec shape {list(dims)} may hold only sizes >= 0 and -1 (any size).")
        object.__setattr__(self, "datatype", datatype.upper())
        object.__setattr__(self, "shape", dims)

    def matches(self, shape: Sequence[int]) -> bool:
        """Does a tensor of ``shape`` fit this spec?"""
        return len(shape) == len(self.shape) and all(d == -1 or d == s for d, s in zip(self.shape, shape, strict=True))

    def check(self, value: Any, where: str) -> Any:
        """``value`` (a numpy array, or nested lists) as a numpy array of this spec;
        :class:`TensorError` naming ``where`` otherwise."""
        np = numpy_module()
        if isinstance(value, np.ndarray):
            array = value
            if datatype_of_dtype(array.dtype) != self.datatype:
                raise TensorError(
                    f"{where} is a tensor of {array.dtype} ({datatype_of_dtype(array.dtype) or 'no OIP datatype'}); "
                    f"it takes {self.datatype}.",
                    input=where,
                )
        else:
            try:
                array = np.asarray(value, dtype=DATATYPES[self.datatype])
            except (TypeError, ValueError, OverflowError) as exc:
                raise TensorError(f"{where} cannot be read as a {self.datatype} tensor: {exc}.", input=where) from None
        if not self.matches(array.shape):
            raise TensorError(
                f"{where} has shape {list(array.shape)}; it takes shape {list(self.shape)} (-1: any size).", input=where
            )
        return array

    # -- pydantic: validation and JSON Schema of an Annotated field --------------------------------
    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        def validate(value: Any, info: Any) -> Any:
            name = getattr(info, "field_name", None) or "the tensor"
            try:
                return self.check(value, repr(name) if name != "the tensor" else name)
            except TensorError as exc:
                raise ValueError(str(exc)) from None

        return core_schema.with_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda a: a.tolist(), when_used="json"),
        )

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> dict[str, Any]:
        leaf: dict[str, Any] = {"type": _JSON_LEAVES[self.datatype]}
        for _ in self.shape:
            leaf = {"type": "array", "items": leaf}
        return {**leaf, "description": f"A {self.datatype} tensor of shape {list(self.shape)} (-1: any size)."}


_JSON_LEAVES = {
    **{t: "integer" for t in DATATYPES if "INT" in t},
    "BOOL": "boolean",
    "FP16": "number",
    "FP32": "number",
    "FP64": "number",
    "BYTES": "string",
}


def datatype_of_dtype(dtype: Any) -> str | None:
    """The OIP datatype of a numpy dtype (``None``: it has none, e.g. complex numbers)."""
    if dtype.kind in "OSU":
        return "BYTES"
    found = _by_dtype().get(dtype)
    if found is None and dtype.byteorder not in "=|":  # a big-endian array: its native twin
        found = _by_dtype().get(dtype.newbyteorder("="))
    return found


@functools.cache
def _by_dtype() -> dict[Any, str]:
    np = numpy_module()
    return {np.dtype(name): datatype for datatype, name in DATATYPES.items() if datatype != "BYTES"}


def tensor_spec_of(annotation: Any) -> TensorSpec | None:
    """The :class:`TensorSpec` in an ``Annotated[...]`` annotation, if any."""
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in typing.get_args(annotation)[1:]:
            if isinstance(meta, TensorSpec):
                return meta
    return None
