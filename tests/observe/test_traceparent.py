"""W3C Trace Context parsing (observe/traceparent.py): the specification's receiver rules, and
properties over arbitrary input (never an exception, always a valid context out)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagserve.observe.traceparent import (
    new_span_id,
    new_trace_id,
    parse_traceparent,
    parse_tracestate,
    request_trace,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
_OUT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-3]")


def test_a_valid_header_keeps_the_callers_trace_with_a_new_span() -> None:
    assert parse_traceparent(VALID) == (TRACE, PARENT, "01")
    assert parse_traceparent(VALID.encode()) == (TRACE, PARENT, "01")
    assert parse_traceparent(f" \t{VALID} ") == (TRACE, PARENT, "01")  # optional white space
    t = request_trace(VALID, "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7")
    assert (t.trace_id, t.parent_id, t.flags) == (TRACE, PARENT, "01")
    assert t.span_id not in (PARENT, "0" * 16) and _OUT.fullmatch(t.traceparent)
    assert t.tracestate == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


@pytest.mark.parametrize(
    "value",
    [
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        VALID.upper(),  # uppercase hex
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{PARENT}-01",  # short trace id
        f"00-{TRACE}-{PARENT}-1",  # short flags
        f"00_{TRACE}_{PARENT}_01",  # wrong separators
        f"0-{TRACE}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-0g",
        f"cc-{TRACE}-{PARENT}-01.",  # a later version's extra part must start with "-"
        "",
        "garbage",
        b"\xff\xfe",
    ],
)
def test_an_invalid_header_is_ignored_and_a_new_trace_starts(value: str | bytes) -> None:
    assert parse_traceparent(value) is None
    t = request_trace(value, "congo=t61rcWkgMzE")
    assert t.trace_id != TRACE and t.parent_id is None and t.tracestate is None  # tracestate dropped too
    assert t.flags == "03" and _OUT.fullmatch(t.traceparent)  # sampled, random trace id


def test_later_versions_are_read_by_their_first_four_fields_and_known_flags_pass_on() -> None:
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-01-what-comes-next") == (TRACE, PARENT, "01")
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-02") == (TRACE, PARENT, "02")
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-ff") == (TRACE, PARENT, "03")
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-fc") == (TRACE, PARENT, "00")
    assert request_trace(f"00-{TRACE}-{PARENT}-00").flags == "00"  # not sampled stays not sampled


def test_several_traceparent_headers_are_invalid() -> None:
    t = request_trace(VALID, several=True)
    assert t.trace_id != TRACE and t.parent_id is None


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (None, None),
        ("", None),
        (" , ,", None),  # empty members are allowed and dropped
        ("a=1", "a=1"),
        (["a=1", b"b=2 , c=x y"], "a=1,b=2,c=x y"),  # several headers are one list
        ("tenant@system=v", "tenant@system=v"),
        ("a=1,a=2", None),  # a key twice
        ("A=1", None),  # uppercase key
        ("a=", None),  # empty value
        ("a=b=c", None),  # '=' in a value
        ("a", None),
        ("a=1\x7f", None),
        (",".join(f"k{i}=v" for i in range(33)), None),  # over 32 members
        (b"a=\xff", None),
    ],
)
def test_tracestate(values: object, expected: str | None) -> None:
    assert parse_tracestate(values) == expected  # type: ignore[arg-type]
    assert parse_tracestate(",".join(f"k{i}=v" for i in range(32))) is not None


def test_new_ids_are_lowercase_hex_and_never_zero() -> None:
    ids = {new_trace_id() for _ in range(200)}
    assert len(ids) == 200 and all(re.fullmatch(r"[0-9a-f]{32}", i) and int(i, 16) for i in ids)
    assert all(re.fullmatch(r"[0-9a-f]{16}", s) and int(s, 16) for s in (new_span_id() for _ in range(200)))


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80)), st.one_of(st.none(), st.text(max_size=80)))
def test_any_input_gives_a_valid_context_and_never_raises(traceparent: str | bytes, tracestate: str | None) -> None:
    t = request_trace(traceparent, tracestate)
    assert _OUT.fullmatch(t.traceparent)
    parsed = parse_traceparent(traceparent)
    assert (t.trace_id == parsed[0]) if parsed else t.parent_id is None


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 2**128 - 1),
    st.integers(1, 2**64 - 1),
    st.integers(0, 255),
    st.sampled_from(["00", "01", "7f", "fe"]),
)
def test_every_well_formed_header_is_kept(trace: int, parent: int, flags: int, version: str) -> None:
    value = f"{version}-{trace:032x}-{parent:016x}-{flags:02x}"
    assert parse_traceparent(value) == (f"{trace:032x}", f"{parent:016x}", f"{flags & 3:02x}")
    assert parse_traceparent(value.replace("-", "_", 1)) is None
