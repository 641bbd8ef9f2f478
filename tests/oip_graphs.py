"""Graphs the Open Inference Protocol tests share (REST, gRPC, local and Ray): tensors, scalars,
a list, and a streaming graph. Importable by Ray's workers (module-level nodes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel

import dagserve


class Features(BaseModel):
    pixels: Annotated[np.ndarray, dagserve.TensorSpec("FP32", [-1, 4])]
    name: str
    scale: float = 1.0
    tags: list[str] = []


@dagserve.node
def summarise(req: Features) -> dict[str, Any]:
    """Sums per row (a tensor), a greeting (BYTES), and numbers the node got as Python scalars."""
    assert isinstance(req.pixels, np.ndarray) and isinstance(req.name, str) and isinstance(req.scale, float)
    return {
        "sums": (req.pixels.sum(axis=1) * req.scale).astype(np.float32),
        "greeting": f"hello {req.name}",
        "rows": int(req.pixels.shape[0]),
        "tags": ",".join(req.tags),
    }


with dagserve.Input(schema=Features) as _inp:
    tensors = dagserve.Graph(summarise(_inp), name="tensors")


class Count(BaseModel):
    n: int
    word: str


@dagserve.node
def count(req: Count) -> Iterator[dict[str, Any]]:
    for i in range(req.n):
        yield {"i": i, "word": f"{req.word}-{i}"}


with dagserve.Input(schema=Count) as _inp2:
    counting = dagserve.Graph(count(_inp2), name="counting")


@dagserve.node
def explode(req: Count) -> str:
    raise ValueError(f"cannot count to {req.n}")


with dagserve.Input(schema=Count) as _inp3:
    failing = dagserve.Graph(explode(_inp3), name="failing")


@dagserve.node
async def slow(req: Count) -> str:
    import asyncio

    await asyncio.sleep(req.n)
    return req.word


with dagserve.Input(schema=Count) as _inp4:
    sleepy = dagserve.Graph(slow(_inp4), name="sleepy")

ALL = [tensors, counting, failing, sleepy]


@dagserve.node
async def drip(req: Count) -> Any:
    """One item every 0.2 s (a stream that a client can leave halfway)."""
    import asyncio

    for i in range(req.n):
        yield {"i": i}
        await asyncio.sleep(0.2)


with dagserve.Input(schema=Count) as _inp5:
    dripping = dagserve.Graph(drip(_inp5), name="dripping")
