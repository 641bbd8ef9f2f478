"""An existing Starlette web app that uses a dagserve graph two ways.

* It **mounts** the graph's HTTP ingress (``App.asgi()``) under ``/embed``: ``POST /embed/`` with
  ``{"text": ...}`` answers ``{"embedding": [...], "dimensions": 12}``.
* Its own ``/search`` route **calls** the graph through the Python handle,
  ``await dag.acall({"text": q})``, and ranks the in-memory corpus by cosine similarity.

``/health`` is an ordinary route of the app, unrelated to dagserve. The graph is deployed when the
app is created and torn down when the server stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import dagserve

from .corpus import DOCUMENTS
from .graph import graph

__all__ = ["SearchIndex", "create_app"]


class SearchIndex:
    """The corpus's embeddings, computed once through the graph at start-up."""

    def __init__(self, documents: list[str]) -> None:
        self.documents = documents
        self.vectors: list[list[float]] = []

    async def build(self, dag: dagserve.App) -> None:
        # Concurrent calls: the batched Embedder node groups them into a few model calls.
        answers = await asyncio.gather(*(dag.acall({"text": d}) for d in self.documents))
        self.vectors = [a["embedding"] for a in answers]

    def search(self, query: list[float], k: int) -> list[dict[str, Any]]:
        scores = [sum(q * d for q, d in zip(query, doc, strict=True)) for doc in self.vectors]
        best = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
        return [{"document": self.documents[i], "score": round(scores[i], 3)} for i in best]


def create_app(backend: str = "local", **backend_options: Any) -> Starlette:
    """The web app, with the embedding graph deployed on ``backend`` (``"local"`` or ``"ray"``)."""
    dag = dagserve.deploy(graph, backend=backend, **backend_options)
    index = SearchIndex(DOCUMENTS)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await index.build(dag)
        try:
            yield
        finally:
            dag.shutdown()

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "documents": len(index.vectors)})

    async def search(request: Request) -> JSONResponse:
        query = request.query_params.get("q", "").strip()
        if not query:
            return JSONResponse({"error": "pass a query: /search?q=..."}, status_code=400)
        try:
            k = max(1, min(int(request.query_params.get("k", "3")), len(DOCUMENTS)))
        except ValueError:
            return JSONResponse({"error": "k must be a whole number"}, status_code=400)
        # The same graph the mount serves, called in-process through the handle: no HTTP hop.
        answer = await dag.acall({"text": query})
        return JSONResponse({"query": query, "results": index.search(answer["embedding"], k)})

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/search", search),
            Mount("/embed", app=dag.asgi()),
        ],
        lifespan=lifespan,
    )
