"""dagserve.File: a value type (equality, pickling, a short repr), checked fields, and a pydantic field type."""

from __future__ import annotations

import pickle

import pytest
from pydantic import BaseModel, ValidationError

import dagserve
from dagserve import File


class Upload(BaseModel):
    image: File
    optional: File | None = None
    many: list[File] = []


def test_file_is_a_value_that_pickles_and_hides_its_content_in_repr() -> None:
    f = File(b"\x89PNG" * 1000, filename="cat.png", content_type="image/png")
    assert pickle.loads(pickle.dumps(f)) == f
    assert f != File(f.content, filename="dog.png", content_type="image/png")
    assert repr(f) == "File(4000 bytes, filename='cat.png', content_type='image/png')"
    assert hash(f) == hash(File(f.content, filename="cat.png", content_type="image/png"))
    with pytest.raises(AttributeError):
        f.filename = "x"  # type: ignore[misc]


def test_file_takes_bytes_like_content_and_defaults() -> None:
    assert File(bytearray(b"ab")).content == b"ab"
    assert File(memoryview(b"ab")) == File(b"ab", filename=None, content_type=None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"content": "text"}, "File content must be bytes, got str"),
        ({"content": b"", "filename": 3}, "filename must be a str or None, got int"),
        ({"content": b"", "content_type": b"image/png"}, "content_type must be a str or None, got bytes"),
    ],
)
def test_file_refuses_wrong_types(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        File(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["png", "image/png\r\nSet-Cookie: a=b", "image/", "text/plain; charset", "a b/c"])
def test_file_content_type_must_be_a_media_type(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a media type"):
        File(b"", content_type=bad)


@pytest.mark.parametrize("good", ["image/png", "text/csv; charset=utf-8", 'text/plain; charset="utf-8"', "application/vnd.a+json"])
def test_file_accepts_media_types_with_parameters(good: str) -> None:
    assert File(b"", content_type=good).content_type == good


def test_a_schema_field_takes_a_file_bytes_or_its_parts() -> None:
    f = File(b"a", filename="a.txt")
    m = Upload(image=f, optional=b"b", many=[b"c", {"content": b"d", "content_type": "image/png"}])
    assert m.image is f
    assert m.optional == File(b"b")
    assert m.many == [File(b"c"), File(b"d", content_type="image/png")]


def test_a_schema_field_names_what_is_wrong() -> None:
    with pytest.raises(ValidationError, match=r"image\n  Value error, Input should be a file"):
        Upload(image="not bytes")
    with pytest.raises(ValidationError, match="File content must be bytes, got int"):
        Upload(image={"content": 3})
    with pytest.raises(ValidationError, match="is not a media type"):
        Upload(image={"content": b"", "content_type": "nope"})


def test_json_schema_and_json_dump_use_base64() -> None:
    schema = Upload.model_json_schema()["properties"]["image"]
    assert schema["format"] == "binary" and schema["contentEncoding"] == "base64"
    from dagserve.http.jsonio import dump_json

    assert dump_json({"f": File(b"ab", filename="x", content_type="image/png")}) == (
        b'{"f":{"content":"YWI=","filename":"x","content_type":"image/png"}}'
    )


def test_a_file_inside_a_model_is_base64_whatever_the_models_bytes_setting() -> None:
    from dagserve.http.jsonio import dump_json

    class Out(BaseModel):
        f: File
        raw: bytes

    out = Out(f=File(b"\xff", filename="x"), raw=b"ab")
    assert dump_json(out) == b'{"f":{"content":"/w==","filename":"x","content_type":null},"raw":"ab"}'
    # Python mode, as for any dataclass in a model: a dict of the fields
    assert out.model_dump()["f"] == {"content": b"\xff", "filename": "x", "content_type": None}


def test_file_is_public() -> None:
    assert dagserve.File is File and "File" in dagserve.__all__
