"""Request bodies into payloads, and outputs into answer bodies, for the graph routes.

Which body a graph route takes depends on its Input schema (:class:`InputShape`, worked out
once per graph): JSON always; ``multipart/form-data`` when the schema has a binary field
(annotated ``bytes`` or ``dagserve.File``, or a list of them); a raw body of any other media
type (``image/png``, ``application/octet-stream`` ...) when it has exactly one, the other
fields then coming from the query string. In JSON a binary field takes base64 text. The rule
for each kind is :func:`body_kind`; the payload is built by :func:`read_payload` (pure, run on a
worker thread for large bodies); and :func:`answer_body` turns a ``bytes`` or ``File`` output
into the answer's bytes and headers. :func:`graph_door` is the graph routes' door (http/doors.py)
made of them: the one way the ingress runs every graph request does the rest. docs/protocols.md
describes all of it for users.
"""

from __future__ import annotations

import base64
import binascii
import types
import typing
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from dagserve._errors import InputValidationError
from dagserve.graph.file import File, check_media_type
from dagserve.http.doors import Door
from dagserve.http.errors import HTTPError
from dagserve.http.jsonio import dump_json, parse_json
from dagserve.http.multipart import MultipartLimitError, Part, boundary_of, parse_multipart
from dagserve.http.origin import check_same_origin

__all__ = ["JSON", "MULTIPART", "RAW", "InputShape", "answer_body", "body_kind", "graph_door", "read_payload"]

JSON = "json"
MULTIPART = "multipart"
RAW = "raw"
_JSON_TYPE = "application/json"
_FORM = "multipart/form-data"


@dataclass(frozen=True, slots=True)
class _Field:
    binary: str | None  # "bytes", "file" or None
    many: bool  # a list (tuple, set) of values: repeated parts or query parameters collect into it
    #: Reads one value of this field from text (a form field, a query parameter), as pydantic reads
    #: strings (``"3"``, ``"true"``, ``"2024-01-02"``), strict schemas included; ``None``: keep the text.
    text: Any = None


class InputShape:
    """What the ingress must know of a graph's Input schema to read bodies that are not JSON."""

    __slots__ = ("binary", "extra", "fields", "schema")

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        fields = getattr(schema, "model_fields", None) or {}
        self.fields: dict[str, _Field] = {
            (info.alias or name): _field(info.annotation) for name, info in fields.items()
        }
        #: The binary fields' names, in the schema's order.
        self.binary = tuple(name for name, f in self.fields.items() if f.binary)
        #: Whether the schema takes fields it does not declare (``extra="allow"``).
        self.extra = (getattr(schema, "model_config", None) or {}).get("extra") == "allow"

    # -- JSON ----------------------------------------------------------------------------------
    def decode_base64(self, payload: Any) -> Any:
        """``payload`` (parsed JSON) with the base64 text of binary fields turned into bytes."""
        if not self.binary or not isinstance(payload, dict):
            return payload
        out = dict(payload)
        for name in self.binary:
            value = out.get(name)
            if isinstance(value, list) and self.fields[name].many:
                out[name] = [_from_base64(v, (name, i)) for i, v in enumerate(value)]
            elif value is not None:
                out[name] = _from_base64(value, (name,))
        return out

    # -- multipart and query strings ---------------------------------------------------------------
    def from_parts(self, parts: Sequence[Part], max_field_bytes: int) -> dict[str, Any]:
        """The payload of a multipart body: binary fields get their parts' bytes (or Files), the
        others their text (a part typed ``application/json`` is parsed as JSON)."""
        values: dict[str, list[Any]] = {}
        for part in parts:
            spec = self.fields.get(part.name)
            if spec is None and not self.extra:
                values.setdefault(part.name, [])  # refused by _collect, with the others
                continue
            if spec is None:  # a schema with extra="allow": a file part is a File, any other its text
                value: Any = _file(part) if part.filename is not None else _text_part(part, max_field_bytes)
            elif spec.binary == "file":
                value = _file(part)
            elif spec.binary == "bytes":
                value = part.data
            else:
                value = _text_part(part, max_field_bytes)
            values.setdefault(part.name, []).append(value)
        return self._collect(values, "part")

    def from_raw(self, body: bytes, content_type: str, query: str) -> dict[str, Any]:
        """The payload of a raw body: the one binary field gets the body, the others come from ``query``."""
        (name,) = self.binary
        values: dict[str, list[Any]] = {}
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            values.setdefault(key, []).append(value)
        if name in values:
            raise _invalid(
                [(name,), "This field is the request body; do not also give it in the query string.", "body_field"]
            )
        payload = self._collect(values, "query parameter")
        media = _media_type(content_type)
        payload[name] = File(body, content_type=media) if self.fields[name].binary == "file" else body
        if self.fields[name].many:
            payload[name] = [payload[name]]
        return payload

    def _collect(self, values: dict[str, list[Any]], what: str) -> dict[str, Any]:
        unknown = [name for name in values if name not in self.fields]
        if unknown and not self.extra:
            known = ", ".join(self.fields) or "none"
            raise _invalid(
                *(
                    [(name,), f"The schema has no field {name!r} (its fields: {known}).", "extra_forbidden"]
                    for name in unknown
                ),
                summary=f"Unknown {what}(s) {_names(unknown)}: {self.schema.__name__} has no such field.",
            )
        payload: dict[str, Any] = {}
        errors: list[list[Any]] = []
        for name, given in values.items():
            spec = self.fields.get(name)
            if spec is not None and spec.text is not None:
                given = [_from_text(spec.text, v, (name, i) if spec.many else (name,), errors) for i, v in enumerate(given)]
            if (spec is None and len(given) > 1) or (spec is not None and spec.many):
                payload[name] = given
            elif len(given) > 1:
                errors.append([(name,), f"Given {len(given)} times; this field takes one value.", "too_many_values"])
            else:
                payload[name] = given[0]
        if errors:
            raise _invalid(*errors)
        return payload


def body_kind(content_type: str | None, shape: InputShape | None) -> str:
    """:data:`JSON`, :data:`MULTIPART` or :data:`RAW` for a graph request with this Content-Type,
    or a 415 :class:`HTTPError` that says what the graph takes."""
    binary = shape.binary if shape is not None else ()
    if len(binary) == 1:
        takes = "application/json, multipart/form-data or the file itself (e.g. image/png)"
    else:
        takes = "application/json or multipart/form-data" if binary else "the body as application/json"
    if content_type is None:
        # A web page may send a body without a type to any server without asking first (a no-cors
        # fetch); one typed application/json needs the server's consent (CORS), which we never give.
        raise HTTPError(
            415, f"The request has no Content-Type; send {takes} (curl: -H 'content-type: application/json')."
        )
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media == _JSON_TYPE or (media.startswith("application/") and media.endswith("+json")):
        for param in params.split(";"):
            key, _, val = param.partition("=")
            if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
                raise HTTPError(415, f"The body's charset is {val.strip()!r}; send JSON encoded as UTF-8.")
        return JSON
    if not binary:
        raise HTTPError(
            415,
            f"The content type is {media!r}; send the body as application/json (this graph's Input schema has no "
            "bytes or dagserve.File field to take a file).",
        )
    if media == _FORM:
        return MULTIPART
    if media == "application/x-www-form-urlencoded" or media.startswith("multipart/"):
        raise HTTPError(
            415,
            f"The content type is {media!r}; send {takes}. (curl's --data-binary sends "
            "application/x-www-form-urlencoded unless told: add -H 'content-type: image/png', or use -F field=@file.)",
        )
    if len(binary) > 1:
        raise HTTPError(
            415,
            f"A raw {media!r} body fills one file field, and this graph's schema has {len(binary)} "
            f"({', '.join(binary)}); send multipart/form-data (curl -F {binary[0]}=@file ...) or JSON with base64.",
        )
    return RAW


def read_payload(
    kind: str,
    body: bytes,
    *,
    shape: InputShape | None,
    content_type: str | None,
    query: str,
    max_json_depth: int,
    max_parts: int,
    max_field_bytes: int,
) -> Any:
    """The payload of a graph request's ``body`` of this ``kind`` (see :func:`body_kind`)."""
    if kind == JSON:
        payload = parse_json(body, max_depth=max_json_depth)
        return shape.decode_base64(payload) if shape is not None else payload
    assert shape is not None and content_type is not None  # body_kind allows no other case
    if kind == MULTIPART:
        parts = parse_multipart(body, boundary_of(content_type), max_parts=max_parts)
        return shape.from_parts(parts, max_field_bytes)
    return shape.from_raw(body, content_type, query)


def graph_door(schema: Any, max_parts: int, max_field_bytes: int) -> Door:
    """The door of a graph route whose Input schema is ``schema`` (``None``: none): JSON always;
    files too when the schema has binary fields, each such body only from a request that no web
    page of another origin sent (http/origin.py); bytes and ``File`` outputs as themselves."""
    shape = InputShape(schema) if schema is not None else None

    def check(scope: Any, content_type: str | None) -> None:
        if body_kind(content_type, shape) != JSON:  # bodies a web page can send cross-site
            check_same_origin(scope)

    def decode(body: bytes, scope: Any, max_depth: int) -> tuple[Any, None]:
        content_type = _header(scope, b"content-type")
        payload = read_payload(
            body_kind(content_type, shape),
            body,
            shape=shape,
            content_type=content_type,
            query=scope["query_string"].decode("latin-1"),
            max_json_depth=max_depth,
            max_parts=max_parts,
            max_field_bytes=max_field_bytes,
        )
        return payload, None

    def encode(result: Any, state: None) -> tuple[bytes, str, dict[str, str] | None]:
        return answer_body(result)

    return Door(protocol="http", shape="dagserve", check=check, decode=decode, encode=encode, streams=True)


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def answer_body(result: Any) -> tuple[bytes, str, dict[str, str] | None]:
    """``(content, media_type, headers)`` of the answer to a graph's output ``result``: a ``bytes`` or
    :class:`File` output as itself (with its media type and file name), anything else as JSON."""
    if not isinstance(result, (File, bytes, bytearray, memoryview)):
        return dump_json(result), _JSON_TYPE, None
    headers = {"x-content-type-options": "nosniff"}  # bytes typed octet-stream are never run as a page
    if isinstance(result, File):
        if result.filename:
            headers["content-disposition"] = _disposition(result.filename)
        return result.content, result.content_type or "application/octet-stream", headers
    return bytes(result), "application/octet-stream", headers


# -- helpers -----------------------------------------------------------------------------------------


def _field(annotation: Any) -> _Field:
    """A schema field's kind: binary (``bytes``, ``File``, optional, in a list) or not, and whether a list."""
    many = False
    for _ in range(4):  # Annotated / Optional / list wrappers, a few levels deep
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            annotation = args[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1:
                break
            annotation = rest[0]
        elif origin in (list, tuple, set, frozenset, Sequence) and not many:
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                break
            many, annotation = True, (args[0] if args else Any)
        else:
            break
    binary = "file" if annotation is File else "bytes" if annotation in (bytes, bytearray) else None
    text = None
    if binary is None and annotation not in (str, Any):
        try:
            text = TypeAdapter(annotation)
        except Exception:  # a type pydantic cannot read alone (a forward reference): the model judges the text
            text = None
    return _Field(binary, many, text)


def _from_text(adapter: Any, value: Any, loc: tuple[Any, ...], errors: list[list[Any]]) -> Any:
    """``value`` read by ``adapter`` when it is text (a JSON part is already typed); errors join ``errors``."""
    if not isinstance(value, str):
        return value
    try:
        return adapter.validate_strings(value)
    except ValidationError as exc:
        errors.extend([(*loc, *e["loc"]), e["msg"], e["type"]] for e in exc.errors(include_url=False))
        return value


def _from_base64(value: Any, loc: tuple[Any, ...]) -> Any:
    if isinstance(value, dict) and isinstance(value.get("content"), str):  # a File as an object
        return {**value, "content": _from_base64(value["content"], (*loc, "content"))}
    if not isinstance(value, str):
        return value  # the schema says what is wrong with it
    text = value.translate(_WHITESPACE)
    try:
        data = text.encode("ascii")
        if b"-" in data or b"_" in data:
            return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
        return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _invalid(
            [loc, "Not valid base64; a binary field takes base64 text in JSON (or send the file as multipart).", _B64]
        ) from None


_WHITESPACE = str.maketrans("", "", " \t\r\n")
_B64 = "base64"


def _names(names: list[str], shown: int = 5) -> str:
    """The first few ``names``, quoted and clipped (they come from the client)."""
    text = ", ".join(repr(n if len(n) <= 40 else n[:40] + "...") for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _file(part: Part) -> File:
    return File(part.data, filename=part.filename, content_type=_media_type(part.content_type))


def _text_part(part: Part, max_field_bytes: int) -> Any:
    if len(part.data) > max_field_bytes:
        raise MultipartLimitError(
            f"The form field {part.name!r} holds {len(part.data)} bytes; form fields take at most {max_field_bytes} "
            "(max_form_field_bytes). Send large content in a bytes or dagserve.File field."
        )
    media = (part.content_type or "").partition(";")[0].strip().lower()
    if media == _JSON_TYPE:
        return parse_json(part.data)
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid([(part.name,), "This form field is not UTF-8 text.", "unicode"]) from None


def _media_type(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_media_type(value.strip())
    except ValueError:
        return None


def _invalid(*errors: list[Any], summary: str | None = None) -> InputValidationError:
    entries = [{"loc": list(loc), "msg": msg, "type": kind} for loc, msg, kind in errors]
    if summary is None:
        where = ", ".join(".".join(map(str, e["loc"])) for e in entries)
        summary = f"The request does not match the graph's Input schema at {where}: {entries[0]['msg']}"
    return InputValidationError(summary, entries)


def _disposition(filename: str) -> str:
    """``inline; filename="..."`` with a safe ASCII name, plus ``filename*`` (RFC 6266) when it is not ASCII."""
    ascii_name = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in filename)
    value = f'inline; filename="{ascii_name}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"
    return value
