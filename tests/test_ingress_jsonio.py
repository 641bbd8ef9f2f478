"""Strict JSON reading and forgiving JSON writing (dagserve._jsonio), without HTTP."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import uuid

import numpy as np
import pytest
from pydantic import BaseModel

from dagserve._jsonio import MAX_DEPTH, JSONBodyError, OutputEncodingError, dump_json, parse_json


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "empty"),
        (b" \n\t", "empty"),
        (b'{"a": 1', "not valid JSON"),
        (b'{"a": 1} trailing', "Extra data"),
        (b'{"text": "caf\xe9"}', "not valid UTF-8 .byte 0xe9 at offset 13"),
        (b"NaN", "contains NaN"),
        (b'{"x": -Infinity}', "contains -Infinity"),
        (b"[1e400]", "does not fit a 64-bit float"),
        (b"1" * 10_000, "integer with 10000 digits"),
        (b"-" + b"9" * 5000, "integer with 5000 digits"),
        (b"1" * 10_000 + b".5", "does not fit a 64-bit float"),
        (b'{"a": 1, "b": 2, "a": 3}', "repeats the key 'a'"),
        (b"[" * 10_000 + b"]" * 10_000, "more than 100 deep"),
        (b'{"a":' * 101 + b"1" + b"}" * 101, "more than 100 deep"),
        (b"[" * 50_000, "more than 100 deep"),
        (b'["\\ud800"]', "unpaired UTF-16 surrogate"),
        (b'{"\\udc00x": 1}', "unpaired UTF-16 surrogate"),
    ],
)
def test_bad_bodies_are_rejected_with_a_precise_message(body: bytes, match: str) -> None:
    with pytest.raises(JSONBodyError, match=match) as info:
        parse_json(body)
    assert info.value.status_code == 400


def test_good_bodies_parse_to_plain_python() -> None:
    assert parse_json(b'{"a": [1, 2.5, "x[{", {"b": null, "c": true}]}') == {
        "a": [1, 2.5, "x[{", {"b": None, "c": True}]
    }
    assert parse_json('{"t": "caf\u00e9"}'.encode()) == {"t": "caf\u00e9"}
    # exactly at the depth limit is fine; brackets inside strings do not count
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    assert parse_json(b'["' + b"[" * 500 + b'"]') == ["[" * 500]
    assert parse_json(b"9" * 4300) == int("9" * 4300)
    assert parse_json(b'["\\ud83d\\ude00", "\\\\ud800"]') == ["\U0001f600", "\\ud800"]  # a pair; an escaped backslash


def test_depth_limit_is_configurable() -> None:
    with pytest.raises(JSONBodyError, match="more than 3 deep"):
        parse_json(b"[[[[1]]]]", max_depth=3)
    assert parse_json(b"[[[1]]]", max_depth=3) == [[[1]]]


class Point(BaseModel):
    x: float
    y: float


@dataclasses.dataclass
class Box:
    lo: tuple[int, int]
    hi: tuple[int, int]


class Color(enum.Enum):
    RED = "red"


def test_outputs_serialise_sensibly() -> None:
    rid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    out = {
        "array": np.arange(3, dtype=np.int64),
        "matrix": np.ones((2, 2), dtype=np.float32),
        "scalar": np.float64(0.25),
        "int": np.int32(7),
        "bool": np.bool_(True),
        "model": Point(x=1, y=2),
        "dataclass": Box((0, 0), (1, 1)),
        "tuple": (1, "a"),
        "set": {3},
        "nan": float("nan"),
        "inf_array": np.array([1.0, np.inf]),
        "when": datetime.date(2024, 5, 1),
        "id": rid,
        "enum": Color.RED,
        "bytes": b"\x00\xff",
    }
    assert dump_json(out) == (
        b'{"array":[0,1,2],"matrix":[[1.0,1.0],[1.0,1.0]],"scalar":0.25,"int":7,"bool":true,'
        b'"model":{"x":1.0,"y":2.0},"dataclass":{"lo":[0,0],"hi":[1,1]},"tuple":[1,"a"],"set":[3],'
        b'"nan":null,"inf_array":[1.0,null],"when":"2024-05-01","id":"12345678-1234-5678-1234-567812345678",'
        b'"enum":"red","bytes":"AP8="}'
    )


def test_unwritable_output_names_the_type() -> None:
    class Opaque:
        pass

    with pytest.raises(OutputEncodingError, match=r"test_ingress_jsonio.*Opaque.* is not JSON serialisable"):
        dump_json({"x": Opaque()})
    with pytest.raises(OutputEncodingError, match="surrogates"):
        dump_json("\ud800")
