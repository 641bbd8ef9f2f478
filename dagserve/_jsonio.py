"""JSON in and out of the HTTP ingress.

Reading is strict, because a request body is untrusted: it must be UTF-8, hold exactly one JSON
document, use no ``NaN``/``Infinity`` and no unpaired surrogate escape (``"\\ud800"``), repeat no
key inside an object, nest at most
:data:`MAX_DEPTH` deep, and hold no number that does not fit a float or has more than
:data:`MAX_INT_DIGITS` digits. Anything else is a :class:`JSONBodyError` (HTTP 400). Nothing is
ever unpickled or evaluated: the standard library's parser builds plain dicts, lists, strings,
numbers, booleans and ``None``.

Writing is forgiving, because the output is the graph's: numpy arrays and scalars (anything with
``tolist()``), pydantic models, dataclasses, tuples, sets, dates, UUIDs, enums and ``Decimal``
serialise as one would expect; ``NaN`` and infinities become ``null`` (JSON has no such numbers);
bytes become base64 text.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import re
from typing import Any

# At the top, not in dump_json (~0.4 µs per call): pydantic is loaded with dagserve anyway (_options).
from pydantic_core import PydanticSerializationError, to_json

from ._errors import DagserveError, RequestError

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "JSONBodyError", "OutputEncodingError", "dump_json", "parse_json"]

#: Deepest nesting of arrays/objects a request body may have.
MAX_DEPTH = 100
#: Longest integer literal (in digits) a request body may hold; Python's own bound for str -> int.
MAX_INT_DIGITS = 4300


class JSONBodyError(RequestError):
    """The request body is not acceptable JSON (HTTP 400)."""

    status_code = 400
    error_type = "InvalidJSON"


class OutputEncodingError(DagserveError):
    """The graph's output cannot be written as JSON (HTTP 500)."""

    status_code = 500
    error_type = "OutputEncodingError"


def _reject_constant(name: str) -> Any:
    raise JSONBodyError(f"The request body contains {name}, which is not valid JSON; send finite numbers (or null).")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JSONBodyError(f"The request body contains the number {_clip(text)}, which does not fit a 64-bit float.")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text) - (text[0] == "-")
    if digits > MAX_INT_DIGITS:
        raise JSONBodyError(
            f"The request body contains an integer with {digits} digits; at most {MAX_INT_DIGITS} are accepted."
        )
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JSONBodyError(
                    f"The request body repeats the key {_clip(repr(key))} in one object; send each key once."
                )
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(
    parse_float=_finite_float,
    parse_int=_bounded_int,
    parse_constant=_reject_constant,
    object_pairs_hook=_unique_keys,
)

# Strings (which may hold brackets) and every non-bracket byte are removed before measuring how
# deep the brackets nest: opening ones count +1, closing ones -1, and the running sum's maximum
# is the depth. Every step runs in C (re, bytes.translate, map, accumulate, filter).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def _too_deep(body: bytes, limit: int) -> bool:
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # cannot nest deeper than it has brackets: the usual case
    steps = _STRING.sub(b"", body).translate(_STEP, _NOT_BRACKET)
    depths = itertools.accumulate(map(operator.sub, steps, itertools.repeat(1)))
    return next(filter(limit.__lt__, depths), None) is not None  # stops at the first level too deep


def parse_json(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON document in ``body``; :class:`JSONBodyError` says precisely what is wrong."""
    if not body.strip():
        raise JSONBodyError("The request body is empty; send a JSON document (for example {}).")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONBodyError(
            f"The request body is not valid UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "send JSON encoded as UTF-8."
        ) from None
    if _too_deep(body, max_depth):
        raise JSONBodyError(f"The request body nests arrays/objects more than {max_depth} deep.")
    try:
        value = _DECODER.decode(text)
        if b"\\ud" in body or b"\\uD" in body:
            _check_surrogates(value)
        return value
    except JSONBodyError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONBodyError(
            f"The request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        ) from None
    except RecursionError:  # pragma: no cover - the depth check above comes first
        raise JSONBodyError(f"The request body nests arrays/objects more than {max_depth} deep.") from None
    except ValueError as exc:  # a number the float/int constructors refuse
        raise JSONBodyError(f"The request body is not valid JSON: {exc}.") from None


def _check_surrogates(value: Any) -> None:
    # "\ud800" is valid JSON syntax but not Unicode: nothing downstream could write it back out.
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise JSONBodyError(
            "The request body contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff); send valid Unicode."
        ) from None


def _fallback(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, torch tensors, pandas Series
    if callable(tolist):
        return tolist()
    raise TypeError(f"an object of type {type(value).__module__}.{type(value).__qualname__} is not JSON serialisable")


def dump_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON; :class:`OutputEncodingError` when something cannot be written."""
    try:
        return to_json(value, fallback=_fallback, inf_nan_mode="null", bytes_mode="base64")
    except (PydanticSerializationError, TypeError, ValueError, RecursionError) as exc:
        text = str(exc).removeprefix("Error serializing to JSON: ")
        raise OutputEncodingError(
            f"The graph's output cannot be written as JSON: {text}. Return dicts, lists, strings, numbers, "
            "numpy arrays or pydantic models."
        ) from None


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
