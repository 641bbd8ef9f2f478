"""The digit image graphs: a PNG in, a classifier, and an answer drawn as a PNG (or JSON).

::

    image (PNG upload) ─ decode ─ DigitModel ─ draw      -> a PNG: the digit as seen, and the votes
                                              └ answer   -> {"digit": 7, "confidence": 0.98, ...}

``decode`` reads the PNG (any size up to 512x512, gray or colour, dark ink on light paper or the
reverse) and shrinks it to the 8x8 grid of 0..16 grey levels the model was trained on (the
digits data set inside scikit-learn: no download). ``DigitModel`` trains a logistic regression
in its ``__init__`` (once per replica). ``draw`` paints the 8x8 image, scaled up, above ten bars
of the model's probabilities, the winning one white, and answers it as ``image/png``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from pydantic import BaseModel

import dagserve

from .png import PNGError, decode_gray, encode_gray

__all__ = ["DigitModel", "DigitUpload", "answer", "classify", "decode", "draw", "graph", "sample_png"]


class DigitUpload(BaseModel):
    """The request: one PNG image of a handwritten digit (multipart field, raw body or base64)."""

    image: dagserve.File


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    return images, labels


def sample_png(index: int = 0, scale: int = 4) -> bytes:
    """The digits data set's image ``index`` as a PNG (white ink on black, ``scale`` times 8x8)."""
    images, _ = _digits()
    grid = images[index].reshape(8, 8) * (255.0 / 16.0)
    return encode_gray(np.kron(grid, np.ones((scale, scale))))


# -- nodes ------------------------------------------------------------------------------------


@dagserve.node
def decode(req: DigitUpload) -> list[float]:
    """PNG -> 64 grey levels in 0..16, light ink on dark (the data set's convention)."""
    try:
        gray = decode_gray(req.image.content).astype(np.float64)
    except PNGError as exc:
        raise dagserve.HTTPError(422, f"The image field is not a PNG this graph reads: {exc}") from None
    if min(gray.shape) < 8:
        raise dagserve.HTTPError(422, f"The image is {gray.shape[1]}x{gray.shape[0]} pixels; send at least 8x8.")
    if gray.mean() > 127:  # dark ink on light paper: turn it round
        gray = 255.0 - gray
    rows = np.array_split(np.arange(gray.shape[0]), 8)  # 8x8 cells, each the mean of its pixels
    cols = np.array_split(np.arange(gray.shape[1]), 8)
    grid = np.array([[gray[np.ix_(r, c)].mean() for c in cols] for r in rows])
    return (grid * (16.0 / 255.0)).reshape(-1).round(2).tolist()  # type: ignore[no-any-return]


@dagserve.node
class DigitModel:
    """A logistic regression on the 1797 8x8 digits, trained at start-up."""

    def __init__(self) -> None:
        from sklearn.linear_model import LogisticRegression

        images, labels = _digits()
        self.model = LogisticRegression(max_iter=2000).fit(images / 16.0, labels)

    def __call__(self, pixels: list[float]) -> list[float]:
        return self.model.predict_proba([np.asarray(pixels) / 16.0])[0].round(4).tolist()  # type: ignore[no-any-return]


@dagserve.node
def answer(probabilities: list[float]) -> dict[str, Any]:
    digit = int(np.argmax(probabilities))
    return {"digit": digit, "confidence": round(probabilities[digit], 2)}


@dagserve.node
def draw(pixels: list[float], probabilities: list[float]) -> dagserve.File:
    """A 128x168 PNG: the 8x8 image the model saw (x16), and under it one bar per digit."""
    canvas = np.zeros((168, 128))
    canvas[:128] = np.kron(np.asarray(pixels).reshape(8, 8) * (255.0 / 16.0), np.ones((16, 16)))
    digit = int(np.argmax(probabilities))
    for d, p in enumerate(probabilities):
        height = max(1, round(p * 34))
        canvas[166 - height : 166, 4 + 12 * d : 14 + 12 * d] = 255 if d == digit else 110
    return dagserve.File(encode_gray(canvas), content_type="image/png", filename=f"digit-{digit}.png")


def _build() -> tuple[dagserve.Graph, dagserve.Graph]:
    model = DigitModel()
    with dagserve.Input(schema=DigitUpload) as inp:
        pixels = decode(inp)
        drawn = draw(pixels, model(pixels))
    with dagserve.Input(schema=DigitUpload) as inp:
        classified = answer(model(decode(inp)))
    return (
        dagserve.Graph(drawn, name="digits_png", description="A PNG of a digit in; a PNG of what the model saw out."),
        dagserve.Graph(classified, name="classify", description="A PNG of a digit in; the digit and confidence out."),
    )


graph, classify = _build()
#: Both graphs, for ``dagserve run examples.digits_png:graphs``.
graphs = [graph, classify]
