"""Serve a graph as an OpenAI model: ``dagserve.openai.chat`` and ``dagserve.openai.completions``.

::

    import dagserve

    @dagserve.node
    async def reply(request: dict) -> AsyncIterator[str]:
        for word in request["messages"][-1]["content"].split():
            yield word + " "

    with dagserve.Input() as request:
        echo = dagserve.openai.chat(dagserve.Graph(reply(request), name="echo"), model="echo")

    dagserve.serve(echo)  # POST /v1/chat/completions with "model": "echo"; GET /v1/models

The graph's ``Input`` receives the request's fields, validated (``messages``, ``max_tokens``,
``temperature``, ``stop``, ``user``, ``model``, ...; unknown fields in ``extra``); its output is
a stream of text pieces (or of ``{"content": ..., "finish_reason": ..., "usage": ...}`` dicts),
or one string for a graph that does not stream. docs/openai.md has the whole contract. Request
models and answer building: :mod:`dagserve.openai.protocol` (no HTTP); the routes:
``dagserve.http.openai_routes``.
"""

from __future__ import annotations

from collections.abc import Iterable

from dagserve._errors import GraphError, GraphOutputError, ModelNotFoundError, ParameterError
from dagserve.graph import Graph
from dagserve.graph.endpoint import OpenAIEndpoint, OpenAIKind

__all__ = [
    "GraphOutputError",
    "ModelNotFoundError",
    "OpenAIEndpoint",
    "ParameterError",
    "chat",
    "completions",
]


def chat(graph: Graph, *, model: str, models: Iterable[str] = (), tools: bool = False) -> Graph:
    """``graph`` served at ``POST /v1/chat/completions`` as the model ``model`` (a marked copy).

    ``models``: further names the graph answers to, exact or a prefix ending in ``*``
    (``models=["ft-*"]``); the request's ``model`` reaches the graph, so one graph can serve many
    fine-tunes. ``tools=True``: the graph takes ``tools`` and ``tool_choice`` and may answer with
    ``{"tool_calls": [...]}``; without it a request with tools is refused (400)::

        chat_graph = dagserve.openai.chat(graph, model="qa-stream")
    """
    return _mark(graph, "chat", model, models, tools)


def completions(graph: Graph, *, model: str, models: Iterable[str] = ()) -> Graph:
    """``graph`` served at ``POST /v1/completions`` (a ``prompt`` in, text out) as the model
    ``model`` (a marked copy); ``models`` as in :func:`chat`::

        completion_graph = dagserve.openai.completions(graph, model="qa-stream")
    """
    return _mark(graph, "completions", model, models, False)


def _mark(graph: Graph, kind: OpenAIKind, model: str, models: Iterable[str], tools: bool) -> Graph:
    if not isinstance(graph, Graph):
        raise GraphError(f"dagserve.openai.{kind} takes a dagserve.Graph, got {type(graph).__name__}.")
    if isinstance(models, str):
        raise GraphError(f"models= takes a list of model names, got the string {models!r}; write models=[{models!r}].")
    return graph.served_as(OpenAIEndpoint(kind, model, tuple(models), tools))
