"""Question answering whose answer streams: TF-IDF retrieval, a reranker, a Markov-chain generator.

Run it (builds the models from the corpus in ``corpus.py``, asks a few questions and prints each
answer as its tokens arrive)::

    python -m examples.qa_stream

Serve it over HTTP and watch an answer stream (Server-Sent Events; ``-N``: no buffering)::

    dagserve run examples.qa_stream:graph
    curl -N 127.0.0.1:8000/ -H 'content-type: application/json' -d '{"question": "How do bees make honey?"}'
    curl -N 127.0.0.1:8000/ -H 'content-type: application/json' -H 'accept: application/x-ndjson' \\
         -d '{"question": "Why is the moon red in an eclipse?"}'

From Python::

    with dagserve.deploy(graph, backend="local") as app:
        for token in app.stream({"question": "How do bees make honey?"}):
            print(token, end="", flush=True)

The graph lives in :mod:`examples.qa_stream.graph`.
"""

from __future__ import annotations

from .graph import Question, graph

__all__ = ["Question", "graph"]
