"""A ``multipart/form-data`` body (RFC 7578) split into its parts: :func:`parse_multipart`.

The ingress has the whole body in memory already (read under ``max_body_bytes``, see
``BodyReader.read``, http/body_reader.py), so the parser works on one ``bytes`` object: every step is a
``bytes.find`` from where the last one stopped (linear in the body, whatever it holds; CPython's
search has no quadratic worst case) and each part's head is searched only within
:data:`MAX_PART_HEAD_BYTES`. Parts are slices of the body, never copied twice. Large bodies are
parsed on a worker thread by the caller. Every defect is a :class:`MultipartError` (400) that
says what is wrong and where; too many parts a :class:`MultipartLimitError` (413). Standard
library only.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

from dagserve._errors import RequestError

__all__ = ["MAX_PART_HEAD_BYTES", "MultipartError", "MultipartLimitError", "Part", "boundary_of", "parse_multipart"]

#: Largest head (its header lines) one part may have.
MAX_PART_HEAD_BYTES = 16 * 1024
#: RFC 2046 allows 70 characters; a little slack for clients that exceed it.
_MAX_BOUNDARY = 200


class MultipartError(RequestError):
    """The ``multipart/form-data`` body is malformed (HTTP 400)."""

    status_code = 400
    error_type = "InvalidMultipart"


class MultipartLimitError(RequestError):
    """The ``multipart/form-data`` body has more parts, or a larger field, than the server takes (HTTP 413)."""

    status_code = 413
    error_type = "MultipartTooLarge"


@dataclass(frozen=True, slots=True)
class Part:
    """One part: its field ``name``, its ``data``, and ``filename`` and ``content_type`` if it has them."""

    name: str
    data: bytes = field(repr=False)
    filename: str | None = None
    content_type: str | None = None


def boundary_of(content_type: str) -> bytes:
    """The ``boundary`` parameter of a ``multipart/form-data`` Content-Type, or :class:`MultipartError`."""
    _, params = _header_params(content_type, "The Content-Type header")
    boundary = params.get("boundary")
    if not boundary:
        raise MultipartError(
            "The multipart/form-data Content-Type has no boundary parameter; let your client set the header "
            "(curl -F, requests' files=, a browser's FormData) instead of writing it by hand."
        )
    if len(boundary) > _MAX_BOUNDARY or not boundary.isascii() or any(c in boundary for c in "\r\n"):
        raise MultipartError(f"The multipart boundary {boundary[:80]!r} is not valid (1-70 ASCII characters).")
    return boundary.encode("ascii")


def parse_multipart(body: bytes, boundary: bytes, *, max_parts: int) -> list[Part]:
    """The parts of ``body``, in order. More than ``max_parts`` parts is a :class:`MultipartLimitError`."""
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        pos = 0
    else:  # a preamble (ignored) may come first
        pos = body.find(b"\r\n" + delimiter)
        if pos < 0:
            raise MultipartError(
                f"The multipart body does not contain its boundary line '--{boundary.decode()}'; it is not "
                "multipart/form-data with that boundary (or it is cut short)."
            )
        pos += 2
    parts: list[Part] = []
    next_delimiter = b"\r\n" + delimiter
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            return parts  # the closing delimiter; an epilogue after it is ignored
        number = len(parts) + 1
        if number > max_parts:
            raise MultipartLimitError(
                f"The multipart body has more than {max_parts} parts (max_form_parts); send fewer files and fields."
            )
        while body.startswith((b" ", b"\t"), pos):  # transport padding (RFC 2046)
            pos += 1
        if not body.startswith(b"\r\n", pos):
            if pos >= len(body):
                raise MultipartError(_cut(number, boundary))
            raise MultipartError(f"The boundary line before part {number} is not followed by a line break.")
        pos += 2
        if body.startswith(b"\r\n", pos):  # a part without headers
            head, start = b"", pos + 2
        else:
            end = body.find(b"\r\n\r\n", pos, pos + MAX_PART_HEAD_BYTES + 4)
            if end < 0:
                if len(body) - pos <= MAX_PART_HEAD_BYTES:
                    raise MultipartError(_cut(number, boundary))
                raise MultipartError(f"The headers of part {number} are longer than {MAX_PART_HEAD_BYTES} bytes.")
            head, start = body[pos:end], end + 4
        stop = body.find(next_delimiter, start)
        if stop < 0:
            raise MultipartError(_cut(number, boundary))
        parts.append(_part(number, head, body[start:stop]))
        pos = stop + 2


def _cut(number: int, boundary: bytes) -> str:
    return (
        f"The multipart body ends inside part {number}: the closing boundary '--{boundary.decode()}--' never "
        "comes (was the body cut short, or sent with another boundary?)."
    )


def _part(number: int, head: bytes, data: bytes) -> Part:
    disposition = content_type = None
    for line in head.split(b"\r\n") if head else ():
        key, colon, value = line.partition(b":")
        if not colon or not key or key != key.strip():
            raise MultipartError(f"Part {number} has a malformed header line {_clip(line)!r}.")
        name = key.lower()
        if name == b"content-disposition" and disposition is None:
            disposition = _text(value).strip()
        elif name == b"content-type" and content_type is None:
            content_type = _text(value).strip() or None
    if disposition is None:
        raise MultipartError(
            f"Part {number} has no Content-Disposition header; each part needs 'form-data; name=\"...\"'."
        )
    kind, params = _header_params(disposition, f"The Content-Disposition of part {number}")
    if kind != "form-data" or "name" not in params:
        raise MultipartError(
            f"Part {number}'s Content-Disposition is {_clip(disposition.encode())!r}; it must be "
            "'form-data; name=\"<field>\"' (with '; filename=\"...\"' for a file)."
        )
    filename = params.get("filename*") or params.get("filename")
    return Part(params["name"], data, filename, content_type)


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")  # browsers send non-ASCII file names as raw UTF-8
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _header_params(value: str, where: str) -> tuple[str, dict[str, str]]:
    """``type; key=value; key="quoted \\" value"`` -> ``("type", {key: value})``: lower-case type and
    keys, the first of a repeated key, ``key*=UTF-8''...`` (RFC 5987) decoded. One pass."""
    kind, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise MultipartError(f"{where} has a parameter without a value: {rest[i:i + 60]!r}.")
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            chars: list[str] = []
            i += 1
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(rest[i])
                i += 1
            if i >= n:
                raise MultipartError(f"{where} has an unterminated quoted value for {key!r}.")
            val = "".join(chars)
            i += 1
        else:
            end = rest.find(";", i)
            end = n if end < 0 else end
            val = rest[i:end].strip()
            i = end
        if key.endswith("*"):
            charset, _, encoded = val.partition("''")
            try:
                val = urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="replace")
            except LookupError:
                raise MultipartError(f"{where} names an unknown charset {charset[:40]!r} for {key!r}.") from None
        params.setdefault(key, val)
    return kind.strip().lower(), params


def _clip(line: bytes) -> str:
    text = line.decode("latin-1")
    return text if len(text) <= 60 else text[:60] + "..."
