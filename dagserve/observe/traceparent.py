"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the ``traceparent`` and
``tracestate`` headers, parsed and made without OpenTelemetry.

Every HTTP request gets a trace context, exported or not (:func:`request_trace`): the caller's
trace id when its ``traceparent`` is valid, a new one otherwise, and a new span id for the
request; the ingress answers with that ``traceparent``. Parsing follows the specification's
rules for receivers:

* version ``00``: exactly ``00-<32 hex>-<16 hex>-<2 hex>``, lowercase; a later version (not
  ``ff``) is read by its first four fields, and anything after them must start with ``-``;
* an all-zero trace id or parent id, a wrong length, uppercase or other characters, or several
  ``traceparent`` headers make the header invalid: it is ignored and a new trace starts;
* ``tracestate`` is kept only with a valid ``traceparent`` and when it is well formed (at most
  32 members, keys and values as the grammar says, no key twice); otherwise it is dropped whole.

Of the trace flags, ``sampled`` (01) and ``random-trace-id`` (02, Trace Context Level 2) are
passed on, the other bits cleared; a new trace has both (its id is random, and it is sampled, as
OpenTelemetry's default sampler does with a root span). Standard library only.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from dagserve.runtime.tracing import W3CTrace

__all__ = [
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
    "parse_tracestate",
    "request_trace",
]

TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"

_HEX = r"[0-9a-f]"
_V00 = re.compile(rf"00-({_HEX}{{32}})-({_HEX}{{16}})-({_HEX}{{2}})")
_ANY = re.compile(rf"({_HEX}{{2}})-({_HEX}{{32}})-({_HEX}{{16}})-({_HEX}{{2}})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_OWS = " \t"
_NEW_FLAGS = "03"  # sampled, random trace id

_KEY_CHARS = r"[a-z0-9_\-*/]"
_KEY = re.compile(rf"[a-z]{_KEY_CHARS}{{0,255}}|[a-z0-9]{_KEY_CHARS}{{0,240}}@[a-z]{_KEY_CHARS}{{0,13}}")
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_MAX_MEMBERS = 32

_bits = random.getrandbits  # reseeded in forked children by the random module itself


def new_trace_id() -> str:
    """A random trace id: 32 lowercase hex characters, never all zeros."""
    while True:
        value = _bits(128)
        if value:
            return f"{value:032x}"


def new_span_id() -> str:
    """A random span id: 16 lowercase hex characters, never all zeros."""
    while True:
        value = _bits(64)
        if value:
            return f"{value:016x}"


def parse_traceparent(value: str | bytes | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid ``traceparent`` value, else ``None``.

    ``flags`` keeps the sampled and random-trace-id bits only (``"00"`` to ``"03"``)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    value = value.strip(_OWS)
    if value.startswith("00"):
        m = _V00.fullmatch(value)
        if m is None:
            return None
        trace_id, parent_id, flags = m.groups()
    else:
        m = _ANY.match(value)
        if m is None or m.group(1) == "ff" or (len(value) > 55 and value[55] != "-"):
            return None
        trace_id, parent_id, flags = m.group(2), m.group(3), m.group(4)
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, f"{int(flags, 16) & 0x03:02x}"


def parse_tracestate(values: str | bytes | Iterable[str | bytes] | None) -> str | None:
    """The ``tracestate`` header(s) (several are one list, in order) as one normalised value
    (``key=value`` members joined by ``,``), or ``None`` when absent, empty or malformed."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)):
        values = [values]
    members: list[str] = []
    keys: set[str] = set()
    for raw in values:
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("ascii")
            except UnicodeDecodeError:
                return None
        for member in raw.split(","):
            member = member.strip(_OWS)
            if not member:
                continue  # empty members are allowed, and dropped
            key, eq, val = member.partition("=")
            if not eq or key in keys or _KEY.fullmatch(key) is None or _VALUE.fullmatch(val) is None:
                return None
            keys.add(key)
            members.append(member)
            if len(members) > _MAX_MEMBERS:
                return None
    return ",".join(members) or None


def request_trace(
    traceparent: str | bytes | None,
    tracestate: str | bytes | Iterable[str | bytes] | None = None,
    *,
    several: bool = False,
) -> W3CTrace:
    """A request's trace context from the headers it came with: the caller's trace (and
    ``tracestate``) when ``traceparent`` is valid, a new trace otherwise; a new span id either
    way. ``several``: more than one ``traceparent`` header came, which makes it invalid."""
    parsed = None if several else parse_traceparent(traceparent)
    if parsed is None:
        return W3CTrace(new_trace_id(), new_span_id(), _NEW_FLAGS)
    trace_id, parent_id, flags = parsed
    return W3CTrace(trace_id, new_span_id(), flags, parent_id, parse_tracestate(tracestate))
