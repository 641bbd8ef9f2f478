"""The multipart/form-data parser: what clients send parses back, every defect is a clear error."""

from __future__ import annotations

import os

import httpx
import pytest

from dagserve.http.multipart import (
    MAX_PART_HEAD_BYTES,
    MultipartError,
    MultipartLimitError,
    Part,
    boundary_of,
    parse_multipart,
)


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
