"""Detect, then classify every crop with a batched model, retrying the unsure ones.

::

    input ─ detect ─┬─ map(Classifier) ─ Annotator ─ output
                    └──────────────────────┘  ┆ calls (handles), only for unsure crops
                                              ├┄ Sharpen
                                              └┄ Classifier  (the same deployment)

Images are small grids of 0/1 pixels (no downloads): ``detect`` finds the blobs of 1s and cuts a
crop around each; ``dagserve.map`` sends every crop to the batched ``Classifier`` (the number of
crops is known only at run time; crops of concurrent requests share batches), which names a
crop's shape (``dot``, ``bar``, ``square``, ``blob``) with a confidence. The ``Annotator``
holds two handles: for each crop the classifier is unsure about it asks ``Sharpen`` for a
cleaner crop and classifies again (at most ``MAX_TRIES`` times): a retry that only code can
express.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

import dagserve

#: Attempts per crop, the first included.
MAX_TRIES = 2
#: Below this confidence a crop is sharpened and classified again.
SURE = 0.9

Crop = list[list[int]]


class Image(BaseModel):
    pixels: list[list[int]]


@dagserve.node
def detect(pixels: list[list[int]]) -> list[Crop]:
    """The crops of the image's blobs (4-connected 1s), top to bottom, left to right."""
    height, width = len(pixels), len(pixels[0]) if pixels else 0
    seen: set[tuple[int, int]] = set()
    crops: list[Crop] = []
    for y in range(height):
        for x in range(width):
            if not pixels[y][x] or (y, x) in seen:
                continue
            blob, todo = [], [(y, x)]
            seen.add((y, x))
            while todo:
                cy, cx = todo.pop()
                blob.append((cy, cx))
                for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                    if 0 <= ny < height and 0 <= nx < width and pixels[ny][nx] and (ny, nx) not in seen:
                        seen.add((ny, nx))
                        todo.append((ny, nx))
            ys, xs = [p[0] for p in blob], [p[1] for p in blob]
            crops.append([row[min(xs) : max(xs) + 1] for row in pixels[min(ys) : max(ys) + 1]])
    return crops


@dagserve.node(max_batch_size=16, batch_wait_timeout_s=0.005)
class Classifier:
    """A crop's shape and how sure of it the model is (a batch of crops in, one answer each out)."""

    def __init__(self) -> None:
        self.batches: list[int] = []  # batch sizes seen, for the demo's report

    async def __call__(self, crops: list[Crop]) -> list[dict[str, Any]]:
        self.batches.append(len(crops))
        return [self._one(c) for c in crops]

    def batch_sizes(self) -> list[int]:
        return list(self.batches)

    @staticmethod
    def _one(crop: Crop) -> dict[str, Any]:
        h, w = len(crop), len(crop[0])
        fill = sum(map(sum, crop)) / (h * w)
        if h == w == 1:
            return {"label": "dot", "confidence": 1.0}
        if min(h, w) == 1:
            return {"label": "bar", "confidence": round(fill, 2)}
        if h == w:
            return {"label": "square", "confidence": round(fill, 2)}
        return {"label": "blob", "confidence": round(max(fill, 0.5), 2)}


@dagserve.node
class Sharpen:
    """A cleaner crop: rows and columns that are mostly empty are trimmed, gaps inside filled."""

    def __call__(self, crop: Crop) -> Crop:
        rows = [r for r in crop if sum(r) * 2 > len(r)] or crop
        keep = [i for i in range(len(rows[0])) if sum(r[i] for r in rows) * 2 > len(rows)] or list(range(len(rows[0])))
        return [[1 for _ in keep] for _ in rows]


@dagserve.node
class Annotator:
    """Classifies each crop through the classifier's handle; retries unsure ones on a sharper crop."""

    def __init__(self, classifier: Any, sharpen: Any) -> None:
        self.classifier = classifier
        self.sharpen = sharpen

    async def __call__(self, crops: list[Crop], answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # ``answers``: the map's first answer per crop, in the crops' order.
        return list(await asyncio.gather(*(self._retry(c, a) for c, a in zip(crops, answers, strict=True))))

    async def _retry(self, crop: Crop, answer: dict[str, Any]) -> dict[str, Any]:
        tries = 1
        while answer["confidence"] < SURE and tries < MAX_TRIES:
            crop = await self.sharpen.acall(crop)
            answer = await self.classifier.acall(crop)
            tries += 1
        return {**answer, "tries": tries}


classifier = Classifier()

with dagserve.Input(schema=Image) as inp:
    crops = detect(inp["pixels"])
    graph = dagserve.Graph(
        {"objects": Annotator(classifier, Sharpen())(crops, dagserve.map(classifier, crops))},
        name="detect_classify",
        description="Blobs found, each crop classified (batched, through map), unsure ones retried through handles",
    )
