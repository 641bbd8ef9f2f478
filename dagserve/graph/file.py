"""``dagserve.File``: bytes with the name and media type they came with (or go out with).

As an ``Input`` schema field type it receives an uploaded file (a multipart part, a raw body, or
base64 in JSON; docs/protocols.md); as a node's return value it makes the HTTP answer those
bytes with that ``Content-Type``. Standard library and pydantic-core only.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import core_schema

__all__ = ["File", "check_media_type"]

# type "/" subtype, then parameters: tokens and quoted strings, never a control character (a header
# value must not be able to end the header).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(
    rf'{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*"))*[ \t]*'
)


def check_media_type(value: str) -> str:
    """``value`` if it is a media type (``image/png``, ``text/csv; charset=utf-8``), else ``ValueError``."""
    if len(value) > 255 or _MEDIA_TYPE.fullmatch(value) is None:
        raise ValueError(f"{value[:60]!r} is not a media type such as 'image/png' or 'application/octet-stream'.")
    return value


@dataclass(frozen=True, slots=True)
class File:
    """A file: its ``content`` (bytes) with an optional ``filename`` and ``content_type``.

    Annotate an ``Input`` schema field with it to receive uploads with their name and type::

        class Upload(BaseModel):
            image: dagserve.File          # or `bytes` for the content alone

    and return one from a node to answer with those bytes::

        return dagserve.File(png, content_type="image/png", filename="digit.png")

    Equal when content, name and type are; pickles (it crosses Ray processes); its ``repr``
    shows the size, not the content.
    """

    content: bytes = field(repr=False)
    filename: str | None = None
    content_type: str | None = None

    def __post_init__(self) -> None:
        content = self.content
        if isinstance(content, (bytearray, memoryview)):
            object.__setattr__(self, "content", bytes(content))
        elif not isinstance(content, bytes):
            raise TypeError(f"File content must be bytes, got {type(content).__name__}.")
        if self.filename is not None and not isinstance(self.filename, str):
            raise TypeError(f"File filename must be a str or None, got {type(self.filename).__name__}.")
        if self.content_type is not None:
            if not isinstance(self.content_type, str):
                raise TypeError(f"File content_type must be a str or None, got {type(self.content_type).__name__}.")
            check_media_type(self.content_type)

    def __repr__(self) -> str:
        return f"File({len(self.content)} bytes, filename={self.filename!r}, content_type={self.content_type!r})"

    # -- pydantic ---------------------------------------------------------------------------------
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        """A field of this type takes a File, bytes, or ``{"content": ..., "filename": ..., "content_type": ...}``."""
        return core_schema.no_info_plain_validator_function(
            _to_file,
            serialization=core_schema.plain_serializer_function_ser_schema(_as_dict, when_used="json"),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "format": "binary", "contentEncoding": "base64"}


def _to_file(value: Any) -> File:
    if isinstance(value, File):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return File(bytes(value))
    if isinstance(value, dict) and "content" in value and set(value) <= {"content", "filename", "content_type"}:
        try:
            return File(**value)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError("Input should be a file: bytes, a dagserve.File, or {content, filename, content_type}.")


def _as_dict(value: File) -> dict[str, Any]:
    # base64 whatever the enclosing model's ser_json_bytes says: the shape a File field takes in JSON
    content = base64.b64encode(value.content).decode("ascii")
    return {"content": content, "filename": value.filename, "content_type": value.content_type}
