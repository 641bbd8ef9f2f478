"""The OpenAI-compatible routes, for the graphs marked with ``dagserve.openai.chat`` /
``dagserve.openai.completions``::

    GET  /v1/models               the model names served         (bearer token if configured)
    GET  /v1/models/<model>       one of them
    POST /v1/chat/completions     a chat model's graph            (stream: true -> Server-Sent Events)
    POST /v1/completions          a completions model's graph

A request goes through the ingress like any other (``Ingress.run_request``: token, content type,
admission, body limits, hang-up cancellation), then the request's ``model`` picks the graph, the
body is validated (dagserve/openai/protocol.py) and the graph runs with ``protocol="openai"``.
Each item the graph yields is one ``data:`` chunk; the stream ends with a chunk holding the
finish reason, the usage when ``stream_options.include_usage`` asks for it, and ``data: [DONE]``.
Every error under ``/v1/`` has OpenAI's shape (errors.py ``error_shape``). This module imports
Starlette at the top: the ingress loads it (http/server.py).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dagserve._errors import GraphOutputError, ModelNotFoundError
from dagserve.http.bodies import graph_door
from dagserve.http.errors import openai_error
from dagserve.http.jsonio import dump_json
from dagserve.http.stream_answers import EVENT_STREAM, first_item
from dagserve.openai.protocol import (
    Answer,
    ChatRequest,
    CompletionRequest,
    ModelTable,
    graph_payload,
    model_object,
    parse_request,
    piece,
    refuse_unsupported,
)

if TYPE_CHECKING:
    from dagserve.app import App
    from dagserve.graph.endpoint import OpenAIKind
    from dagserve.http.calls import Call
    from dagserve.http.ingress import Ingress

__all__ = ["openai_routes", "served_models"]

_JSON = "application/json"


def served_models(apps: dict[str, App]) -> ModelTable[App]:
    """The OpenAI models among ``apps`` (each graph of an App deployed from a list counts);
    :class:`~dagserve.GraphError` for a model name two graphs claim."""
    models: ModelTable[App] = ModelTable()
    for app in apps.values():
        for graph_app in app.graphs.values() or (app,):
            endpoint = graph_app.plan.openai
            if endpoint is not None:
                models.add(endpoint, graph_app)
    return models

#: The OpenAI routes' door (http/doors.py): JSON bodies as the graph routes take them, counted as
#: ``openai`` requests, errors in OpenAI's shape.
_DOOR = dataclasses.replace(graph_door(None, 1, 1), protocol="openai", shape="openai", streams=False)


def openai_routes(ingress: Ingress) -> list[BaseRoute]:
    """The ``/v1/`` routes of ``ingress`` (none when no graph is an OpenAI model)."""
    models = served_models(ingress.apps)
    if not models:
        return []
    door = _OpenAIDoor(ingress, models)
    described = _openapi(auth=ingress.config.token is not None)
    for part in ("paths", "schemas"):
        ingress.described[part].update(described[part])
    chat, completions = functools.partial(door.complete, "chat"), functools.partial(door.complete, "completions")
    return [
        Route("/v1/models", door.list_models, methods=["GET"], name="openai_models"),
        Route("/v1/models/{model:path}", door.get_model, methods=["GET"], name="openai_model"),
        Route("/v1/chat/completions", chat, methods=["POST"], name="openai_chat"),
        Route("/v1/completions", completions, methods=["POST"], name="openai_completions"),
    ]


class _OpenAIDoor:
    def __init__(self, ingress: Ingress, models: ModelTable[App]) -> None:
        self.ingress = ingress
        self.models = models
        self.created = int(time.time())  # when these models came up, as GET /v1/models says

    async def list_models(self, request: Request) -> Response:
        self.ingress.authorize(request)
        return Response(dump_json(self.models.listing(self.created)), media_type=_JSON)

    async def get_model(self, request: Request) -> Response:
        self.ingress.authorize(request)
        name = request.path_params["model"]
        if not any(endpoint.accepts(name) for endpoint, _ in self.models):
            raise ModelNotFoundError(f"The model {name!r} does not exist here; the models are {self.models.names()}.")
        return Response(dump_json(model_object(name, self.created)), media_type=_JSON)

    async def complete(self, kind: OpenAIKind, request: Request) -> Response:
        return await self.ingress.run_request(request, _DOOR, functools.partial(self._answer, kind))

    async def _answer(self, kind: OpenAIKind, call: Call) -> Response:
        body = parse_request(kind, call.payload)  # call.payload: a JSON object from here on
        endpoint, app = self.models.find(kind, body.model)
        refuse_unsupported(body, endpoint)
        call.payload = graph_payload(call.payload, body, endpoint)
        ctx = call.context("openai")
        usage = body.stream_options is not None and body.stream_options.include_usage
        answer = Answer(kind, body.model, request_id=call.request_id, include_usage=usage)
        if not body.stream:
            result = await self.ingress.run(call, app)  # a streaming graph's items in a list
            whole = answer.whole(result if app.streams else [result])
            return Response(dump_json(whole), media_type=_JSON, headers=call.headers())
        items: AsyncIterator[Any]
        if app.streams:
            items = app.astream(call.payload, context=ctx)
            first = await self.ingress.run(call, app, lambda: first_item(items))
        else:  # a graph that answers in one piece: a stream of one chunk
            items, first = _nothing(), (True, await self.ingress.run(call, app))
        if first[0]:
            try:
                piece(first[1], kind)  # a graph that yields the wrong thing fails before the stream starts
            except GraphOutputError:
                close = getattr(items, "aclose", None)
                if close is not None:
                    await close()  # the generator stops here, not when it is collected
                raise
        return self.ingress.streamed(call, items, first, _Chunks(answer))  # type: ignore[return-value]


class _Chunks:
    """OpenAI's stream (a :class:`~dagserve.http.stream_answers.Framing`): ``data: <chunk>`` per item,
    the role first (chat), the finish reason (and usage) last, then ``data: [DONE]``; a failure
    after the first item is a ``data:`` line holding the error, with no ``[DONE]`` after it."""

    media_type = EVENT_STREAM

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def opening(self) -> bytes:
        first = self.answer.opening()
        return b"" if first is None else b"data: " + first + b"\n\n"

    def item(self, item: Any) -> bytes:
        return b"data: " + self.answer.chunk(item) + b"\n\n"

    def closing(self) -> bytes:
        return b"".join(b"data: " + c + b"\n\n" for c in self.answer.closing()) + b"data: [DONE]\n\n"

    def failure(self, status: int, body: dict[str, Any], exc: BaseException) -> bytes:
        return b"data: " + dump_json(openai_error(status, body, exc)) + b"\n\n"


async def _nothing() -> AsyncIterator[Any]:
    return
    yield  # an async generator with no items


# -- the OpenAPI description (GET /openapi.json, /docs) ---------------------------------------------------
_ERROR = {"$ref": "#/components/schemas/openai.Error"}
_ERRORS = {
    "400": "An invalid or unsupported parameter (`param` names it).",
    "401": "The bearer token (the API key) is missing or wrong.",
    "404": "No graph serves the `model` (`model_not_found`).",
    "413": "The body is too large.",
    "415": "The body is not JSON.",
    "500": "A node failed (the message names it).",
    "503": "The server runs max_in_flight requests already; retry.",
    "504": "The request's deadline passed.",
}


def _openapi(*, auth: bool) -> dict[str, dict[str, Any]]:
    """The ``/v1/`` routes' paths and schemas, for the ingress's OpenAPI document."""
    schemas: dict[str, Any] = {
        "openai.Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string", "description": "invalid_request_error or server_error"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    },
                }
            },
        }
    }
    for model in (ChatRequest, CompletionRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/openai.{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[f"openai.{name}"] = sub
        schemas[f"openai.{model.__name__}"] = schema
    security = {"security": [{"bearerAuth": []}]} if auth else {}
    errors = {status: {"description": text, "content": {_JSON: {"schema": _ERROR}}} for status, text in _ERRORS.items()}

    def operation(op_id: str, summary: str, answer: str, **more: Any) -> dict[str, Any]:
        responses = {"200": {"description": answer, "content": {_JSON: {"schema": {"type": "object"}}}}}
        if "requestBody" in more:
            responses["200"]["content"][EVENT_STREAM] = {
                "schema": {"type": "string", "description": "with stream: true, data: <chunk> lines, then data: [DONE]"}
            }
        return {"operationId": op_id, "summary": summary, "tags": ["openai"], "responses": {**responses, **errors},
                **security, **more}

    def body(model: type) -> dict[str, Any]:
        ref = {"$ref": f"#/components/schemas/openai.{model.__name__}"}
        return {"requestBody": {"required": True, "content": {_JSON: {"schema": ref}}}}

    model_param = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
    paths = {
        "/v1/models": {"get": operation("openai_list_models", "List the OpenAI models", "{object: list, data: [...]}")},
        "/v1/models/{model}": {
            "get": operation("openai_get_model", "One OpenAI model", "{id, object: model}", parameters=[model_param])
        },
        "/v1/chat/completions": {
            "post": operation("openai_chat", "OpenAI chat completion", "A chat.completion", **body(ChatRequest))
        },
        "/v1/completions": {
            "post": operation("openai_completion", "OpenAI completion", "A text_completion", **body(CompletionRequest))
        },
    }
    return {"paths": paths, "schemas": schemas}
