"""PNG without Pillow: 8-bit grayscale out, 8-bit grayscale / RGB / with alpha in (zlib and struct).

Enough for an example: :func:`encode_gray` writes what :func:`decode_gray` and every image viewer
read; :func:`decode_gray` reads the non-interlaced 8-bit PNGs that drawing programs, browsers'
canvases and Pillow write, up to :data:`MAX_PIXELS`, and refuses the rest with a
:class:`PNGError` that says why. Decompression is bounded by the size the header declares, so a
small upload cannot inflate into gigabytes.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["MAX_PIXELS", "PNGError", "decode_gray", "encode_gray"]

#: Largest image decode_gray takes (its Average and Paeth filters run a Python loop per row).
MAX_PIXELS = 512 * 512
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


class PNGError(ValueError):
    """The bytes are not a PNG this decoder reads."""


def encode_gray(pixels: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of ``pixels`` (a 2-D array of 0..255)."""
    image = np.ascontiguousarray(np.clip(pixels, 0, 255).astype(np.uint8))
    height, width = image.shape
    rows = np.hstack([np.zeros((height, 1), np.uint8), image])  # filter type 0 (None) before each row
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(rows.tobytes(), 9)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def decode_gray(data: bytes) -> np.ndarray:
    """The image in ``data`` as a 2-D uint8 array of gray levels (colour averaged, alpha over white)."""
    if not data.startswith(_SIGNATURE):
        raise PNGError("The file is not a PNG (it lacks the PNG signature).")
    pos, header, compressed = len(_SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise PNGError(f"The PNG is cut short inside its {kind.decode('latin-1')!r} chunk.")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not compressed:
        raise PNGError("The PNG has no image header or no image data.")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in _CHANNELS or interlace:
        raise PNGError(
            f"Only 8-bit, non-interlaced gray/RGB(A) PNGs are read (this one: depth {depth}, colour type {colour})."
        )
    if not 0 < width * height <= MAX_PIXELS:
        raise PNGError(f"The image is {width}x{height}; at most {MAX_PIXELS} pixels are read.")
    channels = _CHANNELS[colour]
    stride = width * channels
    expected = height * (stride + 1)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(compressed), expected)
    except zlib.error as exc:
        raise PNGError(f"The PNG's image data is corrupt ({exc}).") from None
    if len(raw) != expected:
        raise PNGError(f"The PNG's image data holds {len(raw)} bytes; its header promises {expected}.")
    samples = _unfilter(np.frombuffer(raw, np.uint8).reshape(height, stride + 1), channels)
    pixels = samples.reshape(height, width, channels).astype(np.float64)
    if channels in (2, 4):  # composite over white
        alpha = pixels[..., -1:] / 255.0
        pixels = pixels[..., :-1] * alpha + 255.0 * (1.0 - alpha)
    return np.round(pixels.mean(axis=2)).astype(np.uint8)  # type: ignore[no-any-return]


def _unfilter(rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth)."""
    height, stride = rows.shape[0], rows.shape[1] - 1
    out = np.zeros((height, stride), np.int64)
    previous = np.zeros(stride, np.int64)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int64)
        if kind == 0:
            current = line
        elif kind == 1:  # Sub: a running sum, per channel
            current = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            current = (line + previous) % 256
        elif kind in (3, 4):  # Average, Paeth: each byte depends on the one to its left
            current = line.copy()
            for x in range(stride):
                left = current[x - bpp] if x >= bpp else 0
                up = previous[x]
                if kind == 3:
                    current[x] = (current[x] + (left + up) // 2) % 256
                else:
                    corner = previous[x - bpp] if x >= bpp else 0
                    current[x] = (current[x] + _paeth(left, up, corner)) % 256
        else:
            raise PNGError(f"Row {y} of the PNG has an unknown filter type {kind}.")
        out[y] = previous = current
    return out.astype(np.uint8)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
