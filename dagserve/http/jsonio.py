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
from typing import Any

# At the top, not in dump_json (~0.4 µs per call): pydantic is loaded with dagserve anyway (_options).
from pydantic_core import PydanticSerializationError, to_json

from dagserve._errors import DagserveError, RequestError
from dagserve.http.errors import HTTPError

__all__ = [
    "MAX_DEPTH", "MAX_INT_DIGITS", "JSONBodyError", "OutputEncodingError", "check_content_type", "dump_json", "parse_json",
]

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

# Only quotes (a string may hold brackets) and brackets matter for how deep a body nests.
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b'"[]{}')
# Opening brackets become 2 and closing ones 0, so that "minus 1" is the step in depth.
_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
# The quotes-and-brackets are split at quotes this many bytes at a time (bounded memory).
_CHUNK = 1 << 16


def _too_deep(body: bytes, limit: int) -> bool:
    """Do the arrays/objects of ``body`` nest more than ``limit`` deep?

    One pass over the bytes, whatever they hold, with no regular expression (which can
    backtrack) and no recursion; every step is a C loop of the standard library (replace,
    translate, split, accumulate), so a 10 MiB body costs less than decoding it. Invalid JSON
    may be measured wrongly, but only after the point where the decoder stops reading it, so
    the decoder never nests deeper than measured.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # cannot nest deeper than it has brackets: the usual case
    if b"\\" in body:
        # Inside a string a backslash escapes the next byte. Dropping escaped backslashes (left
        # to right, as the decoder pairs them), then escaped quotes, leaves only the quotes that
        # open or close strings.
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = body.translate(None, _NOT_STRUCTURAL)
    depth = 0
    outside = 0  # 0 when the chunk starts outside a string, 1 inside: the index of the first piece outside
    for start in range(0, len(marks), _CHUNK):
        pieces = marks[start : start + _CHUNK].split(b'"')
        brackets = b"".join(pieces[outside::2])
        if len(pieces) % 2 == 0:  # an odd number of quotes: the chunk ends on the other side
            outside ^= 1
        if brackets:
            steps = map(operator.sub, brackets.translate(_STEP), itertools.repeat(1))
            if max(itertools.accumulate(steps, initial=depth)) > limit:
                return True
            depth += 2 * (brackets.count(b"[") + brackets.count(b"{")) - len(brackets)
    return False


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


def _lenient(value: Any) -> Any:
    try:
        return _fallback(value)
    except TypeError:
        return str(value)


def dump_json(value: Any, *, lenient: bool = False) -> bytes:
    """``value`` as compact UTF-8 JSON; :class:`OutputEncodingError` when something cannot be written.

    ``lenient`` writes what JSON has no type for as its ``str()`` (status tables, not graph outputs).
    """
    try:
        return to_json(value, fallback=_lenient if lenient else _fallback, inf_nan_mode="null", bytes_mode="base64")
    except (PydanticSerializationError, TypeError, ValueError, RecursionError) as exc:
        text = str(exc).removeprefix("Error serializing to JSON: ")
        raise OutputEncodingError(
            f"The graph's output cannot be written as JSON: {text}. Return dicts, lists, strings, numbers, "
            "numpy arrays or pydantic models."
        ) from None


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


_JSON = "application/json"


def check_content_type(value: str | None) -> None:
    """A 415 :class:`~dagserve.http.errors.HTTPError` unless ``value`` (a Content-Type header) is JSON in UTF-8."""
    if value is None:
        # A web page may send a body without a type to any server without asking first (a no-cors
        # fetch); one typed application/json needs the server's consent (CORS), which we never give.
        raise HTTPError(
            415,
            "The request has no Content-Type; send the body as application/json "
            "(curl: -H 'content-type: application/json').",
        )
    media, _, params = value.partition(";")
    media = media.strip().lower()
    if media != _JSON and not (media.startswith("application/") and media.endswith("+json")):
        raise HTTPError(415, f"The content type is {media!r}; send the body as application/json.")
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise HTTPError(415, f"The body's charset is {val.strip()!r}; send JSON encoded as UTF-8.")
