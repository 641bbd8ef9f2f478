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

As an OpenAI model (``qa-stream``), for the ``openai`` client, LangChain or any chat front-end
(docs/openai.md)::

    dagserve run examples.qa_stream:openai_models
    curl -N 127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \
         -d '{"model": "qa-stream", "stream": true, "messages": [{"role": "user", "content": "How do bees make honey?"}]}'

The graphs live in :mod:`examples.qa_stream.graph`.
"""

from __future__ import annotations

from .graph import Question, chat, completion, graph, openai_models

__all__ = ["Question", "chat", "completion", "graph", "openai_models"]
