"""http/bodies.py on its own: which fields are binary, which body a graph takes, base64, answers."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

import dagserve
from dagserve._errors import InputValidationError
from dagserve.http.bodies import JSON, MULTIPART, RAW, InputShape, answer_body, body_kind, read_payload
from dagserve.http.errors import HTTPError
from dagserve.http.multipart import Part


class Kinds(BaseModel):
    raw: bytes
    file: dagserve.File
    maybe: dagserve.File | None = None
    files: list[dagserve.File] = []
    blobs: Annotated[list[bytes] | None, Field(description="x")] = None
    aliased: bytes = Field(b"", alias="blob-2")
    text: str = ""
    numbers: list[int] = []
    either: bytes | str = ""  # ambiguous: not binary


class One(BaseModel):
    image: dagserve.File
    scale: int = 1
    tags: list[str] = []


class Data(BaseModel):
    data: bytes


class Many(BaseModel):
    files: list[bytes]


def test_binary_fields_are_found_through_optional_annotated_lists_and_aliases() -> None:
    shape = InputShape(Kinds)
    assert shape.binary == ("raw", "file", "maybe", "files", "blobs", "blob-2")
    assert {name: (f.binary, f.many) for name, f in shape.fields.items()} == {
        "raw": ("bytes", False),
        "file": ("file", False),
        "maybe": ("file", False),
        "files": ("file", True),
        "blobs": ("bytes", True),
        "blob-2": ("bytes", False),
        "text": (None, False),
        "numbers": (None, True),
        "either": (None, False),
    }


@pytest.mark.parametrize(
    ("content_type", "schema", "kind"),
    [
        ("application/json", None, JSON),
        ("application/vnd.api+json; charset=utf-8", One, JSON),
        ("multipart/form-data; boundary=x", One, MULTIPART),
        ("image/png", One, RAW),
        ("application/octet-stream", One, RAW),
        ("text/plain", One, RAW),
        ("multipart/form-data; boundary=x", Kinds, MULTIPART),
    ],
)
def test_body_kind(content_type: str, schema: Any, kind: str) -> None:
    assert body_kind(content_type, InputShape(schema) if schema else None) == kind


@pytest.mark.parametrize(
    ("content_type", "schema", "message"),
    [
        (None, None, "no Content-Type; send the body as application/json"),
        (None, One, "no Content-Type; send application/json, multipart/form-data or the file itself"),
        ("application/json; charset=latin-1", One, "charset is 'latin-1'"),
        ("image/png", None, "send the body as application/json"),
        ("multipart/mixed; boundary=x", One, "The content type is 'multipart/mixed'"),
        ("application/x-www-form-urlencoded", One, "curl's --data-binary sends"),
        ("image/png", Kinds, "schema has 6 (raw, file, maybe, files, blobs, blob-2)"),
    ],
)
def test_body_kind_refusals_say_what_the_graph_takes(content_type: str | None, schema: Any, message: str) -> None:
    with pytest.raises(HTTPError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        body_kind(content_type, InputShape(schema) if schema else None)
    assert info.value.status_code == 415


def read(kind: str, body: bytes, content_type: str | None = None, query: str = "", schema: Any = One) -> Any:
    return read_payload(
        kind, body, shape=InputShape(schema), content_type=content_type, query=query,
        max_json_depth=10, max_parts=10, max_field_bytes=100,
    )


def test_base64_in_json_standard_url_safe_unpadded_wrapped_and_as_an_object() -> None:
    assert read(JSON, b'{"image": "AAEC"}') == {"image": b"\x00\x01\x02"}
    assert read(JSON, b'{"image": "-_8"}') == {"image": b"\xfb\xff"}
    assert read(JSON, b'{"image": "AA\\nEC"}') == {"image": b"\x00\x01\x02"}
    assert read(JSON, b'{"image": {"content": "AAEC", "filename": "a"}}') == {"image": {"content": b"\x00\x01\x02", "filename": "a"}}
    assert read(JSON, b'{"image": null, "scale": 2}') == {"image": None, "scale": 2}  # the schema judges
    assert read(JSON, b"[1]") == [1]
    with pytest.raises(InputValidationError, match="at image: Not valid base64") as info:
        read(JSON, b'{"image": "A"}')
    assert info.value.errors == [{"loc": ["image"], "msg": info.value.errors[0]["msg"], "type": "base64"}]
    with pytest.raises(InputValidationError, match=r"at image\.content"):
        read(JSON, b'{"image": {"content": "\\u00e9"}}')


def test_raw_bodies_and_their_query_strings() -> None:
    assert read(RAW, b"png", "image/png", "scale=2&tags=a&tags=b") == {
        "image": dagserve.File(b"png", content_type="image/png"), "scale": 2, "tags": ["a", "b"],
    }
    # A Content-Type that is no media type is dropped, not trusted.
    assert read(RAW, b"x", "image/png\x7f")["image"].content_type is None
    assert read(RAW, b"x", "audio/wav", schema=Data) == {"data": b"x"}
    assert read(RAW, b"x", "audio/wav", schema=Many) == {"files": [b"x"]}


def test_form_parts_fill_fields() -> None:
    shape = InputShape(Kinds)
    parts = [
        Part("raw", b"r"),
        Part("file", b"f", "f.png", "image/png"),
        Part("files", b"1", "1"),
        Part("files", b"2", "2", "bad type"),
        Part("numbers", b"1"),
        Part("numbers", b"2"),
        Part("text", b'"json"', None, "application/json"),
    ]
    assert shape.from_parts(parts, 100) == {
        "raw": b"r",
        "file": dagserve.File(b"f", filename="f.png", content_type="image/png"),
        "files": [dagserve.File(b"1", filename="1"), dagserve.File(b"2", filename="2")],
        "numbers": [1, 2],
        "text": "json",
    }
    with pytest.raises(InputValidationError, match="This form field is not UTF-8 text") as info:
        shape.from_parts([Part("text", b"\xff")], 100)
    assert info.value.errors[0]["loc"] == ["text"]


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")

    image: bytes


def test_a_schema_that_allows_extra_fields_takes_unknown_parts() -> None:
    parts = [Part("image", b"i"), Part("x", b"1"), Part("x", b"2"), Part("doc", b"d", "d.pdf", "application/pdf")]
    assert InputShape(Open).from_parts(parts, 100) == {
        "image": b"i", "x": ["1", "2"], "doc": dagserve.File(b"d", filename="d.pdf", content_type="application/pdf"),
    }
    assert read(RAW, b"i", "image/png", "colour=red", schema=Open) == {"image": b"i", "colour": "red"}
    with pytest.raises(InputValidationError, match=r"Unknown part\(s\) 'x'"):
        InputShape(One).from_parts([Part("image", b"i"), Part("x", b"1")], 100)


class Strict(BaseModel):
    model_config = ConfigDict(strict=True)

    image: bytes
    n: int = 0
    on: bool = False
    day: date | None = None
    counts: list[int] = []


def test_text_fields_are_read_as_pydantic_reads_strings_even_for_strict_schemas() -> None:
    parts = [Part("image", b"i"), Part("n", b"3"), Part("on", b"true"), Part("day", b"2024-01-02"), Part("counts", b"4")]
    payload = InputShape(Strict).from_parts(parts, 100)
    assert payload == {"image": b"i", "n": 3, "on": True, "day": date(2024, 1, 2), "counts": [4]}
    assert Strict.model_validate(payload).n == 3  # a strict schema takes what the text became
    bad = [Part("image", b"i"), Part("n", b"three"), Part("counts", b"1"), Part("counts", b"x")]
    with pytest.raises(InputValidationError) as info:
        InputShape(Strict).from_parts(bad, 100)
    assert [(e["loc"], e["type"]) for e in info.value.errors] == [(["n"], "int_parsing"), (["counts", 1], "int_parsing")]
    assert read(RAW, b"i", "image/png", "n=7&on=0", schema=Strict) == {"image": b"i", "n": 7, "on": False}


def test_many_unknown_parts_are_named_briefly() -> None:
    parts = [Part("image", b"i")] + [Part(f"x{i}" * (1 if i else 30), b"") for i in range(8)]
    with pytest.raises(InputValidationError) as info:
        InputShape(One).from_parts(parts, 100)
    assert str(info.value) == (
        "Unknown part(s) 'x0x0x0x0x0x0x0x0x0x0x0x0x0x0x0x0x0x0x0x0...', 'x1', 'x2', 'x3', 'x4' and 3 more: "
        "One has no such field."
    )
    assert len(info.value.errors) == 8


def test_answer_body() -> None:
    assert answer_body({"a": b"\x00"}) == (b'{"a":"AA=="}', "application/json", None)
    content, media, headers = answer_body(bytearray(b"ab"))
    assert (content, media, headers) == (b"ab", "application/octet-stream", {"x-content-type-options": "nosniff"})
    _, media, headers = answer_body(dagserve.File(b"", filename='a"b\r\n.png', content_type="image/png"))
    assert media == "image/png"
    assert headers["content-disposition"] == 'inline; filename="a_b__.png"; filename*=UTF-8\'\'a%22b%0D%0A.png'
