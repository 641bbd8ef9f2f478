"""Checks of files in and bytes out over real HTTP, shared by the local and the Ray test modules.

Each takes the served base URL; the server serves the graphs of tests/binary_graphs.py (at least
``upload``, ``blob`` and ``file_out``) and ``examples.digits_png``'s ``digits_png``.
"""

from __future__ import annotations

import base64
import hashlib
import io

import httpx

from examples.digits_png import sample_png

PNG = sample_png(7)  # a 32x32 grayscale PNG of a 7


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def check_multipart(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/upload", files={"image": ("seven.png", PNG, "image/png")}, data={"note": "hi", "scale": "3"})
        assert r.status_code == 200, r.text
        assert r.json() == {
            "size": len(PNG), "sha": sha(PNG), "filename": "seven.png", "content_type": "image/png", "note": "hi", "scale": 3,
        }


def check_raw(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/upload?note=raw&scale=2", content=PNG, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.json() == {
            "size": len(PNG), "sha": sha(PNG), "filename": None, "content_type": "image/png", "note": "raw", "scale": 2,
        }
        r = c.post("/blob?repeat=3", content=b"\x00\xff", headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200 and r.content == b"\x00\xff" * 3, r.text


def check_base64(url: str) -> None:
    text = base64.b64encode(PNG).decode()
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/upload", json={"image": text, "note": "json"})
        assert r.status_code == 200, r.text
        assert (r.json()["sha"], r.json()["filename"]) == (sha(PNG), None)
        r = c.post("/upload", json={"image": {"content": text, "filename": "7.png", "content_type": "image/png"}})
        assert r.status_code == 200, r.text
        assert (r.json()["sha"], r.json()["filename"], r.json()["content_type"]) == (sha(PNG), "7.png", "image/png")


def check_file_answer(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/file_out", json={"data": base64.b64encode(b"ab").decode(), "repeat": 2})
        assert r.status_code == 200, r.text
        assert r.content == b"abab"
        assert r.headers["content-type"] == "image/png"
        assert r.headers["content-disposition"] == "inline; filename=\"_chelle 1.png\"; filename*=UTF-8''%C3%A9chelle%201.png"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-request-id"]


def check_png_answer(url: str) -> None:
    """The example's drawing node answers a PNG that a real decoder (Pillow) reads."""
    from PIL import Image

    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/digits_png", files={"image": ("seven.png", PNG, "image/png")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"] == 'inline; filename="digit-7.png"'
    image = Image.open(io.BytesIO(r.content))
    assert (image.format, image.mode, image.size) == ("PNG", "L", (128, 168))
    # The winning bar (digit 7) is white, the others grey at most.
    bars = [image.getpixel((8 + 12 * d, 165)) for d in range(10)]
    assert bars[7] == 255 and max(b for d, b in enumerate(bars) if d != 7) < 255, bars
