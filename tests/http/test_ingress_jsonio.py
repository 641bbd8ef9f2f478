"""Strict JSON reading and forgiving JSON writing (dagserve.http.jsonio), without HTTP."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from dagserve.http.jsonio import MAX_DEPTH, JSONBodyError, OutputEncodingError, _too_deep, dump_json, parse_json

ROOT = Path(__file__).resolve().parents[2]


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


# -- the depth check: exact on JSON, linear on anything ---------------------------------------------


def _reference_depth(body: bytes) -> int:
    """The nesting depth, byte by byte with a string/escape state machine (slow, obviously right)."""
    depth = peak = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            peak = max(peak, depth)
        elif byte in b"]}":
            depth -= 1
    return peak


_text = st.text(alphabet=st.sampled_from('ab"\\[]{}/\u00e9\n'), max_size=12)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None)
@given(value=_json_values, ascii_only=st.booleans(), limit=st.integers(min_value=0, max_value=8))
def test_depth_check_agrees_with_a_byte_by_byte_scanner(value: Any, ascii_only: bool, limit: int) -> None:
    """Strings full of quotes, backslashes and brackets: the check measures exactly what the
    decoder would nest, and parse_json refuses exactly the bodies deeper than the limit."""
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    deep = _reference_depth(body) > limit
    assert _too_deep(body, limit) is deep
    if deep:
        with pytest.raises(JSONBodyError, match=f"more than {limit} deep"):
            parse_json(body, max_depth=limit)
    else:
        assert parse_json(body, max_depth=limit) == value


@pytest.mark.parametrize(
    "body",
    [
        b'["\\\\", [[1]]]',  # an escaped backslash ends right before the closing quote
        b'["\\\\\\"[[[", [[1]]]',  # an escaped backslash, then an escaped quote, inside one string
        b'[["' + b"[" * 300 + b'"]]',
        b'[' * 3 + b'"' + b']' * 5,  # an unterminated string hides the brackets after it
    ],
)
def test_depth_check_on_tricky_strings(body: bytes) -> None:
    assert _too_deep(body, 2) is (_reference_depth(body) > 2)


# Run in a subprocess so that a quadratic check fails the test at the timeout instead of
# holding the interpreter (a regular expression never lets go of it) for hours.
_WORK = """
import json, sys, time
from dagserve.http.jsonio import JSONBodyError, parse_json
out = {}
for n in (32_000, 512_000):  # 64 KB and 1 MB: 101 '[' then '"' and '\\\\"' repeated n times
    body = b"[" * 101 + b'"' + b'\\\\"' * n
    costs = []
    for _ in range(7):
        start = time.thread_time()
        try:
            parse_json(body)
            status = 200
        except JSONBodyError as exc:
            status = exc.status_code
        costs.append(time.thread_time() - start)
    out[len(body)] = {"status": status, "cpu_s": min(costs)}
print(json.dumps(out))
"""


def test_the_depth_check_costs_work_proportional_to_the_body() -> None:
    """Issue 15: the check was a regular expression that, on one unterminated string of escaped
    quotes, cost the square of the size (16 KB: 1.1 s; 64 KB froze the server for over 10 s).
    The CPU time for 1 MB must be about 16x that for 64 KB (quadratic would be 256x)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _WORK], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
        )
    except subprocess.TimeoutExpired:
        pytest.fail("parsing a 64 KB and a 1 MB body of escaped quotes took over 60 s: not linear")
    small, large = json.loads(done.stdout).values()
    assert small["status"] == large["status"] == 400
    ratio = large["cpu_s"] / small["cpu_s"]
    print(f"\n64 KB: {small['cpu_s'] * 1e3:.2f} ms, 1 MB: {large['cpu_s'] * 1e3:.2f} ms of CPU; ratio {ratio:.1f}")
    assert ratio < 64, ratio  # linear: ~16; quadratic: ~256
