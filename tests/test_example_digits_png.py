"""examples/digits_png: its PNG codec against a reference one (Pillow) and against every PNG row
filter, its refusals, and the graphs in process (HTTP: tests/http/test_binary_http.py)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dagserve
from examples.digits_png import classify, graph, sample_png
from examples.digits_png.__main__ import main
from examples.digits_png.png import MAX_PIXELS, PNGError, decode_gray, encode_gray

RNG = np.random.default_rng(0)


def pillow_png(array: np.ndarray, mode: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, "PNG", **options)
    return out.getvalue()


def test_pillow_reads_what_encode_gray_writes() -> None:
    pixels = RNG.integers(0, 256, (13, 29)).astype(np.uint8)
    image = Image.open(io.BytesIO(encode_gray(pixels)))
    assert (image.mode, image.size) == ("L", (29, 13))
    assert np.array_equal(np.asarray(image), pixels)


@pytest.mark.parametrize("optimize", [False, True])
def test_decode_gray_reads_pillows_gray_and_colour_pngs(optimize: bool) -> None:
    gray = RNG.integers(0, 256, (20, 17)).astype(np.uint8)
    assert np.array_equal(decode_gray(pillow_png(gray, "L", optimize=optimize)), gray)
    rgb = RNG.integers(0, 256, (20, 17, 3)).astype(np.uint8)
    assert np.array_equal(decode_gray(pillow_png(rgb, "RGB", optimize=optimize)), np.round(rgb.mean(axis=2)).astype(np.uint8))
    rgba = np.dstack([rgb, np.full((20, 17), 255, np.uint8)])
    assert np.array_equal(decode_gray(pillow_png(rgba, "RGBA")), decode_gray(pillow_png(rgb, "RGB")))
    clear = np.dstack([rgb, np.zeros((20, 17), np.uint8)])  # fully transparent: white paper
    assert (decode_gray(pillow_png(clear, "RGBA")) == 255).all()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def filtered_png(samples: np.ndarray, channels: int, colour: int, kinds: list[int]) -> bytes:
    """A PNG whose row ``y`` uses filter ``kinds[y]`` (a reference encoder for each filter)."""
    height, stride = samples.shape
    s = samples.astype(np.int64)
    rows = []
    for y in range(height):
        up = s[y - 1] if y else np.zeros(stride, np.int64)
        left = np.concatenate([np.zeros(channels, np.int64), s[y, :-channels]])
        corner = np.concatenate([np.zeros(channels, np.int64), up[:-channels]])
        kind = kinds[y]
        if kind == 4:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
        else:
            predictor = [np.zeros(stride, np.int64), left, up, (left + up) // 2][kind]
        rows.append(bytes([kind]) + ((s[y] - predictor) % 256).astype(np.uint8).tobytes())
    width = stride // channels
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("channels", "colour"), [(1, 0), (3, 2)])
def test_decode_gray_undoes_every_row_filter(channels: int, colour: int) -> None:
    samples = RNG.integers(0, 256, (10, 7 * channels)).astype(np.uint8)
    png = filtered_png(samples, channels, colour, [0, 1, 2, 3, 4, 4, 3, 2, 1, 0])
    expected = np.round(samples.reshape(10, 7, channels).mean(axis=2)).astype(np.uint8)
    assert np.array_equal(decode_gray(png), expected)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))).reshape(10, -1), samples)  # the reference agrees


def test_decode_gray_refuses_what_it_cannot_read() -> None:
    png = encode_gray(np.zeros((4, 4)))
    with pytest.raises(PNGError, match="lacks the PNG signature"):
        decode_gray(b"GIF89a")
    with pytest.raises(PNGError, match="cut short inside its 'IDAT' chunk"):
        decode_gray(png[:45])
    with pytest.raises(PNGError, match="depth 16"):
        decode_gray(png[:16] + struct.pack(">IIBBBBB", 4, 4, 16, 0, 0, 0, 0) + png[29:])
    big = struct.pack(">IIBBBBB", 1000, 1000, 8, 0, 0, 0, 0)
    with pytest.raises(PNGError, match=f"1000x1000; at most {MAX_PIXELS} pixels"):
        decode_gray(png[:16] + big + png[29:])


def test_a_decompression_bomb_is_inflated_only_as_far_as_its_header_promises() -> None:
    import tracemalloc

    header = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)  # 4x4: 20 bytes of rows
    body = zlib.compress(b"\0" * (1 << 24), 9)  # ~16 KB inflating to 16 MiB
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    tracemalloc.start()
    try:
        image = decode_gray(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.shape == (4, 4) and not image.any()
    assert peak < 1 << 20, f"decoding took {peak} bytes"


def test_the_graphs_classify_and_draw_in_process() -> None:
    with dagserve.deploy(classify, backend="local") as app:
        answers = [app.call({"image": dagserve.File(sample_png(i))})["digit"] for i in range(30)]
        right = sum(a == i % 10 for i, a in enumerate(answers))  # the data set's first images are 0, 1 ... 9, 0 ...
        assert right >= 27, answers  # a logistic regression: 98.5 % right on its own training images
        # Dark ink on light paper, larger and in colour: turned round and shrunk to 8x8.
        ink = 255 - np.kron(decode_gray(sample_png(3, scale=1)), np.ones((6, 6)))
        rgb = pillow_png(np.dstack([ink] * 3).astype(np.uint8), "RGB")
        assert app.call({"image": rgb})["digit"] == 3
        with pytest.raises(dagserve.HTTPError, match="not a PNG this graph reads: The file is not a PNG") as info:
            app.call({"image": b"text"})
        assert info.value.status_code == 422 and info.value.node == "decode"
    with dagserve.deploy(graph, backend="local") as app:
        drawn = app.call({"image": sample_png(6)})
        assert (drawn.content_type, drawn.filename) == ("image/png", "digit-6.png")
        assert Image.open(io.BytesIO(drawn.content)).size == (128, 168)


def test_the_command_writes_a_sample_and_classifies_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["sample", str(tmp_path / "d.png"), "--index", "4"])
    main(["classify", str(tmp_path / "d.png")])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"wrote {tmp_path / 'd.png'}"
    assert out[1].startswith(f"{tmp_path / 'd.png'}: {{'digit': 4, 'confidence':")
