"""Graphs with files in and bytes out, for the binary body tests (importable by Ray replicas)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

import dagserve


class Upload(BaseModel):
    """One file field (so raw bodies work) and two others (from the query string or form fields)."""

    image: dagserve.File
    note: str = ""
    scale: int = 1


class Blob(BaseModel):
    data: bytes
    repeat: int = 1


class Pair(BaseModel):
    """Two binary fields (raw bodies refused), a list of files, and structured fields."""

    a: bytes
    b: dagserve.File | None = None
    more: list[dagserve.File] = []
    tags: list[str] = []
    meta: dict[str, Any] = {}


class StrictUpload(BaseModel):
    """Only a file (for fuzzing from the OpenAPI document, which cannot say that the query string
    fills the other fields only with a raw body)."""

    model_config = ConfigDict(strict=True)

    image: dagserve.File


class StrictBlob(BaseModel):
    model_config = ConfigDict(strict=True)

    data: bytes


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dagserve.node
def describe(req: Upload) -> dict[str, Any]:
    f = req.image
    return {
        "size": len(f.content),
        "sha": _digest(f.content),
        "filename": f.filename,
        "content_type": f.content_type,
        "note": req.note,
        "scale": req.scale,
    }


@dagserve.node
def repeat(req: Blob) -> bytes:
    return req.data * req.repeat


@dagserve.node
def pair(req: Pair) -> dict[str, Any]:
    return {
        "a": _digest(req.a),
        "b": None if req.b is None else [_digest(req.b.content), req.b.filename, req.b.content_type],
        "more": [[m.filename, len(m.content)] for m in req.more],
        "tags": req.tags,
        "meta": req.meta,
    }


@dagserve.node
def as_file(req: Blob) -> dagserve.File:
    return dagserve.File(req.data * req.repeat, content_type="image/png", filename="échelle 1.png")


@dagserve.node
def measure(req: StrictUpload) -> dict[str, Any]:
    return {"size": len(req.image.content), "type": req.image.content_type}


@dagserve.node
def strict_file(req: StrictBlob) -> dagserve.File:
    return dagserve.File(req.data[::-1], content_type="application/octet-stream")


@dagserve.node
def structured(req: Blob) -> dict[str, Any]:
    return {"data": req.data, "file": dagserve.File(req.data, filename="d.bin", content_type="application/x-d")}


@dagserve.node
def chunks(req: Blob) -> Iterator[bytes]:
    for _ in range(req.repeat):
        yield req.data


def _graph(name: str, schema: type[BaseModel], step: Any) -> dagserve.Graph:
    with dagserve.Input(schema=schema) as inp:
        out = step(inp)
    return dagserve.Graph(out, name=name)


def upload() -> dagserve.Graph:
    return _graph("upload", Upload, describe)


def blob() -> dagserve.Graph:
    return _graph("blob", Blob, repeat)


def pairs() -> dagserve.Graph:
    return _graph("pairs", Pair, pair)


def file_out() -> dagserve.Graph:
    return _graph("file_out", Blob, as_file)


def mixed_out() -> dagserve.Graph:
    return _graph("mixed_out", Blob, structured)


def byte_stream() -> dagserve.Graph:
    return _graph("byte_stream", Blob, chunks)


def strict_upload() -> dagserve.Graph:
    return _graph("strict_upload", StrictUpload, measure)


def strict_file_out() -> dagserve.Graph:
    return _graph("strict_file_out", StrictBlob, strict_file)


ALL = (upload, blob, pairs, file_out, mixed_out, byte_stream)
