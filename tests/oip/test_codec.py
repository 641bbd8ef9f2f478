"""The OIP codec (dagserve/oip/codec.py): tensors to numpy and back, the binary framing."""

from __future__ import annotations

import struct
import numpy as np
import pytest

import dagserve
from dagserve.oip.codec import (
    OutputTensorError,
    from_raw,
    from_values,
    split_binary,
    take_binary,
    to_array,
    to_raw,
    to_values,
)


def test_values_nested_or_flat_become_an_array_of_the_shape() -> None:
    flat = from_values("x", "FP32", [2, 2], [1, 2, 3, 4])
    nested = from_values("x", "FP32", [2, 2], [[1, 2], [3, 4]])
    assert flat.dtype == np.float32 and flat.shape == (2, 2)
    assert np.array_equal(flat, nested)
    words = from_values("w", "BYTES", [2], ["a", "é"])
    assert words.tolist() == [b"a", "é".encode()]


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("FP32", [3], [1, 2], r"Input 'x' has 2 elements of data; its shape \[3\] needs 3"),
        ("FP99", [1], [1], r"Input 'x' has datatype 'FP99', which is not an OIP datatype"),
        ("INT32", [-1], [1], r"Input 'x' has shape \[-1\]; a shape is a list of sizes >= 0"),
        ("UINT8", [1], [300], r"Input 'x': its data cannot be read as UINT8"),
        ("BYTES", [1], [5], r"Input 'x' is BYTES; its data holds int 5, not strings"),
        ("FP32", [2], [[1], [2, 3]], r"Input 'x': its data cannot be read as FP32"),
    ],
)
def test_bad_values_name_the_input(datatype: str, shape: list[int], data: object, message: str) -> None:
    with pytest.raises(dagserve.TensorError, match=message) as info:
        from_values("x", datatype, shape, data)
    assert info.value.input == "x" and info.value.status_code == 400


def test_raw_bytes_round_trip_every_fixed_size_datatype() -> None:
    for datatype, dtype in [("BOOL", bool), ("UINT16", np.uint16), ("INT64", np.int64), ("FP16", np.float16), ("FP64", np.float64)]:
        array = np.arange(6).astype(dtype).reshape(2, 3)
        back = from_raw("x", datatype, [2, 3], to_raw(array))
        assert back.dtype == array.dtype and np.array_equal(back, array)
    words = np.array([b"ab", b"", "ü".encode()], dtype=object)
    raw = to_raw(words)
    assert raw[:6] == struct.pack("<I", 2) + b"ab"
    assert from_raw("w", "BYTES", [3], raw).tolist() == words.tolist()


def test_raw_bytes_that_do_not_fit_the_shape_are_refused_before_allocating() -> None:
    with pytest.raises(dagserve.TensorError, match=r"Input 'x' has 8 bytes of data; shape \[1000000000000\] of FP32 needs"):
        from_raw("x", "FP32", [10**12], b"\0" * 8)
    with pytest.raises(dagserve.TensorError, match="ends inside an element's 4-byte length"):
        from_raw("w", "BYTES", [1], b"\1\0")
    with pytest.raises(dagserve.TensorError, match="says it is 100 bytes long but only 2 remain"):
        from_raw("w", "BYTES", [1], struct.pack("<I", 100) + b"ab")
    with pytest.raises(dagserve.TensorError, match=r"Input 'w' has 1 elements of data; its shape \[2\] needs 2"):
        from_raw("w", "BYTES", [2], struct.pack("<I", 1) + b"a")


def test_binary_part_of_a_rest_body() -> None:
    header, binary = split_binary(b'{"a":1}XYZ', "7")
    assert header == b'{"a":1}' and bytes(binary) == b"XYZ"
    raw, at = take_binary("x", binary, 0, 2)
    assert bytes(raw) == b"XY" and at == 2
    with pytest.raises(dagserve.TensorError, match="says it has 5 bytes of binary data, but only 1 remain"):
        take_binary("x", binary, 2, 5)
    with pytest.raises(dagserve.TensorError, match="Inference-Header-Content-Length header is '99'"):
        split_binary(b"{}", "99")


def test_outputs_become_tensors_or_say_why_not() -> None:
    assert to_array("o", "hi").tolist() == ["hi"]
    assert to_array("o", 3).dtype == np.int64 and to_array("o", 2.5).dtype == np.float64
    assert to_array("o", True).dtype == np.bool_
    assert to_array("o", [1.0, 2.0], "FP32").dtype == np.float32
    assert to_values("o", np.array([b"ok"], dtype=object)) == ["ok"]
    with pytest.raises(OutputTensorError, match="holds bytes that are not UTF-8 text"):
        to_values("o", np.array([b"\xff"], dtype=object))
    with pytest.raises(OutputTensorError, match="The graph's output 'o' .* cannot be an OIP tensor"):
        to_array("o", {"a": 1})
