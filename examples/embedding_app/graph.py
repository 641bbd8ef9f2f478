"""The embedding graph the web app mounts and calls: clean -> Embedder (batched) -> response.

The embedder is latent semantic analysis, small and download-free: hashed word and word-pair
counts, TF-IDF weighting, then a truncated SVD fitted at start-up on the corpus the app serves.
Vectors have unit length, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

import dagserve

from .corpus import DOCUMENTS

__all__ = ["DIMENSIONS", "Embedder", "TextIn", "clean", "graph", "respond"]

DIMENSIONS = 12


class TextIn(BaseModel):
    """The request: one text to embed."""

    text: str = Field(min_length=1, max_length=2000)


@dagserve.node
def clean(text: str) -> str:
    """Business logic: lower case, letters and digits only."""
    return " ".join(re.findall(r"\w+", text.lower()))


@dagserve.node(max_batch_size=64, batch_wait_timeout_s=0.005)
class Embedder:
    """Turns texts into unit vectors; batched, so embedding a corpus takes a few model calls."""

    def __init__(self, corpus: list[str], dimensions: int = DIMENSIONS) -> None:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import Normalizer

        self.model = make_pipeline(
            HashingVectorizer(
                n_features=2**12, ngram_range=(1, 2), alternate_sign=False, norm=None, stop_words="english"
            ),
            TfidfTransformer(sublinear_tf=True),
            TruncatedSVD(dimensions, random_state=0),
            Normalizer(),
        ).fit(corpus)

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        return self.model.transform(texts).round(6).tolist()  # type: ignore[no-any-return]


@dagserve.node
def respond(vector: list[float]) -> dict[str, Any]:
    """Business logic: the response document."""
    return {"embedding": vector, "dimensions": len(vector)}


with dagserve.Input(schema=TextIn) as request:
    answer = respond(Embedder(DOCUMENTS)(clean(request["text"])))

graph = dagserve.Graph(answer, name="embeddings", description="Text embeddings (LSA) for search")
