"""An embedding service inside an existing Starlette web app.

Run it (serves on 127.0.0.1:8000; the graph runs in-process on the local backend)::

    python -m examples.embedding_app                 # --port, --backend ray also work

then::

    curl -s '127.0.0.1:8000/search?q=coffee+with+milk&k=2'
    curl -s 127.0.0.1:8000/embed/ -H 'content-type: application/json' -d '{"text": "bread"}'
    curl -s 127.0.0.1:8000/health

The web app is :mod:`examples.embedding_app.app`, the graph :mod:`examples.embedding_app.graph`.
"""

from __future__ import annotations

from .graph import graph

__all__ = ["graph"]
