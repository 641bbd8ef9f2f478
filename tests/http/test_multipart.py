"""The multipart/form-data parser: what clients send parses back, every defect is a clear error."""

from __future__ import annotations

import os

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagserve._errors import RequestError
from dagserve.http.bodies import MULTIPART, InputShape, read_payload
from dagserve.http.multipart import (
    MAX_PART_HEAD_BYTES,
    MultipartError,
    MultipartLimitError,
    Part,
    boundary_of,
    parse_multipart,
)
from tests.binary_graphs import Pair


def parse(body: bytes, boundary: bytes = b"xx", max_parts: int = 100) -> list[Part]:
    return parse_multipart(body, boundary, max_parts=max_parts)


def encoded(files: list[tuple[str, tuple[str, bytes, str]]], data: dict[str, str]) -> tuple[bytes, str]:
    """A body and Content-Type as httpx (a real client) writes them."""
    request = httpx.Request("POST", "http://127.0.0.1/", files=files, data=data)
    return request.read(), request.headers["content-type"]


def test_a_real_clients_body_parses_back_exactly() -> None:
    tricky = b"\r\n--" + os.urandom(3000) + b"\r\n\r\n--x"  # content that looks like delimiters and heads
    body, content_type = encoded(
        [("image", ("cat ü.png", tricky, "image/png")), ("more", ("a.bin", b"", "application/octet-stream"))],
        {"note": "hello\r\nworld", "scale": "3"},
    )
    parts = parse_multipart(body, boundary_of(content_type), max_parts=10)
    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("note", None, None),
        ("scale", None, None),
        ("image", "cat ü.png", "image/png"),
        ("more", "a.bin", "application/octet-stream"),
    ]
    assert [p.data for p in parts] == [b"hello\r\nworld", b"3", tricky, b""]


def test_preamble_epilogue_padding_and_header_forms() -> None:
    body = (
        b"preamble to ignore\r\n--xx  \t\r\n"
        b'content-disposition: form-data; name="a"; filename="q\\"uote.txt"\r\nContent-Type: text/plain\r\n\r\n'
        b"1\r\n--xx\r\n"
        b"Content-Disposition: form-data; name=b; filename*=UTF-8''%C3%A9t%C3%A9.png; filename=\"ascii.png\"\r\n\r\n"
        b"2\r\n--xx--\r\nepilogue"
    )
    assert parse(body) == [Part("a", b"1", 'q"uote.txt', "text/plain"), Part("b", b"2", "été.png", None)]


def test_boundary_comes_from_the_content_type() -> None:
    assert boundary_of("multipart/form-data; boundary=abc") == b"abc"
    assert boundary_of('multipart/form-data; charset=utf-8; BOUNDARY="a b:c"') == b"a b:c"
    with pytest.raises(MultipartError, match="has no boundary parameter; let your client set the header"):
        boundary_of("multipart/form-data")
    with pytest.raises(MultipartError, match="is not valid"):
        boundary_of("multipart/form-data; boundary=" + "a" * 300)
    with pytest.raises(MultipartError, match="unterminated quoted value for 'boundary'"):
        boundary_of('multipart/form-data; boundary="abc')
    with pytest.raises(MultipartError, match="parameter without a value"):
        boundary_of("multipart/form-data; boundary")


HEAD = b'--xx\r\nContent-Disposition: form-data; name="f"\r\n\r\n'


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "does not contain its boundary line '--xx'"),
        (b'{"json": "instead"}', "does not contain its boundary line"),
        (b"--xx", "ends inside part 1"),
        (b"--xx\r\n", "ends inside part 1"),
        (b'--xx\r\nContent-Disposition: form-data; name="f"\r\n', "ends inside part 1"),
        (HEAD + b"data, never closed", "ends inside part 1: the closing boundary '--xx--' never comes"),
        (HEAD + b"1\r\n--xx\r\n" + HEAD[6:] + b"2", "ends inside part 2"),
        (b"--xxjunk\r\n", "not followed by a line break"),
        (b"--xx\r\nno colon here\r\n\r\n\r\n--xx--", "Part 1 has a malformed header line 'no colon here'"),
        (b"--xx\r\n: empty name\r\n\r\n\r\n--xx--", "malformed header line"),
        (b"--xx\r\nContent-Type: text/plain\r\n\r\n\r\n--xx--", "Part 1 has no Content-Disposition header"),
        (b"--xx\r\n\r\nno headers at all\r\n--xx--", "Part 1 has no Content-Disposition header"),
        (b"--xx\r\nContent-Disposition: attachment; name=f\r\n\r\n\r\n--xx--", "must be 'form-data; name="),
        (b"--xx\r\nContent-Disposition: form-data; filename=a\r\n\r\n\r\n--xx--", "must be 'form-data; name="),
        (b'--xx\r\nContent-Disposition: form-data; name="f\r\n\r\n\r\n--xx--', "unterminated quoted value for 'name'"),
        (b"--xx\r\nContent-Disposition: form-data; name=f; filename*=nope''%C3%A9\r\n\r\n\r\n--xx--", "unknown charset 'nope'"),
    ],
)
def test_malformed_bodies_say_what_is_wrong(body: bytes, match: str) -> None:
    with pytest.raises(MultipartError, match=match) as info:
        parse(body)
    assert info.value.status_code == 400 and info.value.error_type == "InvalidMultipart"


def test_a_part_head_is_searched_only_up_to_its_limit() -> None:
    body = b"--xx\r\nX-Pad: " + b"a" * (MAX_PART_HEAD_BYTES + 10) + b"\r\n\r\n\r\n--xx--"
    with pytest.raises(MultipartError, match=f"headers of part 1 are longer than {MAX_PART_HEAD_BYTES} bytes"):
        parse(body)


def test_too_many_parts_is_a_limit_error() -> None:
    body = HEAD + b"1" + b"\r\n--xx\r\n" + HEAD[6:] + b"2\r\n--xx--"
    assert len(parse(body, max_parts=2)) == 2
    with pytest.raises(MultipartLimitError, match="more than 1 parts \\(max_form_parts\\)") as info:
        parse(body, max_parts=1)
    assert info.value.status_code == 413


def test_a_body_of_near_delimiters_parses_in_one_pass() -> None:
    # Every step searches forward from where the last stopped: no rescanning (this would be slow
    # if the parser backtracked over the 4 MiB of near misses).
    near = b"\r\n--x" * (1 << 20)
    (part,) = parse(HEAD + near + b"\r\n--xx--")
    assert part.data == near
    with pytest.raises(MultipartError, match="ends inside part 1"):
        parse(HEAD + near)


# -- properties ----------------------------------------------------------------------------------------

_names = st.text(st.characters(blacklist_characters='"\\\r\n', blacklist_categories=["Cs"]), min_size=1, max_size=12)
_parts = st.lists(st.tuples(_names, st.binary(max_size=200), st.none() | _names), max_size=6)


def _encode(parts: list[tuple[str, bytes, str | None]], boundary: bytes) -> bytes:
    out = b""
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


@settings(max_examples=300, deadline=None)
@given(_parts)
def test_what_an_encoder_writes_parses_back(parts: list[tuple[str, bytes, str | None]]) -> None:
    boundary = b"----dagserve-boundary-7MA4YWxkTrZu0gW"  # not in the data: hypothesis draws short binaries
    parsed = parse_multipart(_encode(parts, boundary), boundary, max_parts=10)
    assert [(p.name, p.data, p.filename) for p in parsed] == parts


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([b"b", b"--", b"x y"]))
def test_any_bytes_are_parts_or_a_clear_error(body: bytes, boundary: bytes) -> None:
    body = b"--" + boundary + b"\r\n" + body  # start where the parser has work to do
    try:
        parse_multipart(body, boundary, max_parts=5)
    except (MultipartError, MultipartLimitError):
        pass
    # and through the payload builder: only request errors (4xx), never anything else
    try:
        read_payload(
            MULTIPART, body, shape=InputShape(Pair), content_type="multipart/form-data; boundary=" + boundary.decode(),
            query="", max_json_depth=10, max_parts=5, max_field_bytes=50,
        )
    except RequestError:
        pass
