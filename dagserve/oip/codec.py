"""Tensors of the Open Inference Protocol to numpy and back, for the REST and gRPC doors alike.

Nothing here knows HTTP or gRPC: the doors hand in what they parsed (a JSON document and the
bytes after it, or a protobuf message's fields) and get numpy arrays back.

* :func:`from_values` reads a tensor sent as values (JSON ``data``, gRPC ``contents``),
  :func:`from_raw` one sent as raw bytes (the binary tensor data extension, gRPC
  ``raw_input_contents``): little-endian, row-major; ``BYTES`` elements each a 4-byte
  little-endian length then the bytes.
* :func:`to_raw` and :func:`to_values` write an output array the same two ways.
* :func:`split_binary` cuts a REST body into its JSON header and the binary data after it.

Every size is checked against the data that came before anything is allocated: a shape claims
nothing the body does not hold. Parsing is linear in the body's size.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from typing import Any

from dagserve._errors import TensorError
from dagserve.graph.tensors import DATATYPES, datatype_of_dtype, numpy_module

__all__ = [
    "HEADER_LENGTH",
    "check_shape",
    "datatype_of",
    "from_raw",
    "from_values",
    "split_binary",
    "take_binary",
    "to_array",
    "to_raw",
    "to_values",
]

#: The REST header that says how long a body's JSON part is (binary tensor data extension).
HEADER_LENGTH = "inference-header-content-length"

#: Little-endian numpy dtypes of the fixed-size datatypes (the wire is little-endian).
_WIRE = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
_LENGTH = struct.Struct("<I")


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """``shape`` as a tuple of sizes; :class:`TensorError` naming the input when it is not one."""
    if not isinstance(shape, (list, tuple)) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise TensorError(f"Input {name!r} has shape {shape!r}; a shape is a list of sizes >= 0.", input=name)
    if len(shape) > 32:
        raise TensorError(f"Input {name!r} has {len(shape)} dimensions; at most 32 are accepted.", input=name)
    return tuple(shape)


def _check_datatype(name: str, datatype: Any) -> str:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise TensorError(
            f"Input {name!r} has datatype {datatype!r}, which is not an OIP datatype ({', '.join(DATATYPES)}).", input=name
        )
    return datatype


def from_values(name: str, datatype: Any, shape: Any, values: Any) -> Any:
    """The tensor ``name`` sent as values (nested or flat lists; strings or bytes for ``BYTES``)."""
    np = numpy_module()
    datatype = _check_datatype(name, datatype)
    dims = check_shape(name, shape)
    count = math.prod(dims)
    if datatype == "BYTES":
        flat = [_as_bytes(name, v) for v in _flatten(values)]
        if len(flat) != count:
            raise _count_error(name, dims, len(flat))
        array = np.empty(count, dtype=object)
        array[:] = flat
        return array.reshape(dims)
    try:
        array = np.asarray(values, dtype=DATATYPES[datatype])
    except (TypeError, ValueError, OverflowError) as exc:
        raise TensorError(f"Input {name!r}: its data cannot be read as {datatype}: {exc}.", input=name) from None
    if array.size != count:
        raise _count_error(name, dims, array.size)
    return array.reshape(dims)


def from_raw(name: str, datatype: Any, shape: Any, raw: bytes | memoryview) -> Any:
    """The tensor ``name`` sent as raw little-endian bytes."""
    np = numpy_module()
    datatype = _check_datatype(name, datatype)
    dims = check_shape(name, shape)
    count = math.prod(dims)
    if datatype == "BYTES":
        items = list(_split_bytes(name, raw))
        if len(items) != count:
            raise _count_error(name, dims, len(items))
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(dims)
    dtype = np.dtype(_WIRE[datatype])
    if len(raw) != count * dtype.itemsize:
        raise TensorError(
            f"Input {name!r} has {len(raw)} bytes of data; shape {list(dims)} of {datatype} needs "
            f"{count * dtype.itemsize}.",
            input=name,
        )
    return np.frombuffer(raw, dtype=dtype).astype(DATATYPES[datatype], copy=False).reshape(dims)


def _split_bytes(name: str, raw: bytes | memoryview) -> Iterator[bytes]:
    view = memoryview(raw)
    at, end = 0, len(view)
    while at < end:
        if end - at < 4:
            raise TensorError(f"Input {name!r}: its BYTES data ends inside an element's 4-byte length.", input=name)
        (size,) = _LENGTH.unpack_from(view, at)
        at += 4
        if size > end - at:
            raise TensorError(
                f"Input {name!r}: a BYTES element says it is {size} bytes long but only {end - at} remain.", input=name
            )
        yield bytes(view[at : at + size])
        at += size


def _flatten(values: Any) -> Iterator[Any]:
    """The leaves of nested lists, in row-major order (no recursion: depth cannot hurt)."""
    stack = [iter((values,))]
    while stack:
        for value in stack[-1]:
            if isinstance(value, (list, tuple)):
                stack.append(iter(value))
                break
            yield value
        else:
            stack.pop()


def _as_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TensorError(f"Input {name!r} is BYTES; its data holds {type(value).__name__} {value!r}, not strings.", input=name)


def _count_error(name: str, dims: tuple[int, ...], got: int) -> TensorError:
    return TensorError(
        f"Input {name!r} has {got} elements of data; its shape {list(dims)} needs {math.prod(dims)}.", input=name
    )


# -- outputs -------------------------------------------------------------------------------------------


def datatype_of(array: Any) -> str | None:
    """The OIP datatype of a numpy array (``None``: it has none, e.g. complex numbers)."""
    return datatype_of_dtype(array.dtype)


def to_array(name: str, value: Any, datatype: str | None = None) -> Any:
    """An output value as a numpy array with an OIP datatype (``datatype``: the declared one).

    Arrays stay as they are; ``str``/``bytes`` become one ``BYTES`` element, ``bool``, ``int``
    and ``float`` one ``BOOL``, ``INT64`` and ``FP64`` element; lists become arrays.
    """
    np = numpy_module()
    if isinstance(value, np.ndarray):
        array = value
    elif isinstance(value, (str, bytes)):
        array = np.empty(1, dtype=object)
        array[0] = value
    elif isinstance(value, (bool, int, float, np.generic)):
        array = np.asarray([value])
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise OutputTensorError(f"The graph's output {name!r} cannot be a tensor: {exc}.") from None
    if datatype is not None and datatype != "BYTES" and datatype_of(array) != datatype:
        array = array.astype(DATATYPES[datatype])
    found = datatype_of(array)
    if found is None or (array.dtype.kind == "O" and not all(isinstance(v, (str, bytes)) for v in array.flat)):
        raise OutputTensorError(
            f"The graph's output {name!r} ({type(value).__name__} of {array.dtype}) cannot be an OIP tensor; "
            "return numpy arrays, numbers, strings or bytes (or lists of them)."
        )
    return array


def to_raw(array: Any) -> bytes:
    """An output array as raw little-endian bytes (``BYTES``: length-prefixed elements)."""
    if array.dtype.kind in "OSU":
        parts = []
        for v in array.flat:
            b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
            parts.append(_LENGTH.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    wire = _WIRE[datatype_of(array) or ""]
    return array.astype(wire, copy=False).tobytes(order="C")


def to_values(name: str, array: Any) -> list[Any]:
    """An output array as a flat list of JSON values (``BYTES``: UTF-8 text)."""
    if array.dtype.kind not in "OSU":
        return array.reshape(-1).tolist()  # type: ignore[no-any-return]
    out = []
    for v in array.flat:
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise OutputTensorError(
                    f"The graph's output {name!r} holds bytes that are not UTF-8 text, which JSON cannot carry; "
                    "ask for it with binary_data (tritonclient: InferRequestedOutput(name, binary_data=True))."
                ) from None
        out.append(v)
    return out


def split_binary(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """A REST body's JSON header and the binary data after it (``header_length``: the
    ``Inference-Header-Content-Length`` header, if any)."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not text.isdigit() or int(text) > len(body):
        raise TensorError(
            f"The Inference-Header-Content-Length header is {header_length!r}; it must be the size in bytes of the "
            f"JSON part of the body (the body has {len(body)} bytes)."
        )
    size = int(text)
    return body[:size], memoryview(body)[size:]


def take_binary(name: str, data: memoryview, at: int, size: Any) -> tuple[memoryview, int]:
    """``size`` bytes of the binary part at offset ``at`` for input ``name``, and the next offset."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise TensorError(f"Input {name!r} has binary_data_size {size!r}; it must be a number of bytes.", input=name)
    if at + size > len(data):
        raise TensorError(
            f"Input {name!r} says it has {size} bytes of binary data, but only {len(data) - at} remain in the body.",
            input=name,
        )
    return data[at : at + size], at + size


class OutputTensorError(TensorError):
    """The graph's output cannot be written as OIP tensors (HTTP 500: the graph's fault)."""

    status_code = 500
