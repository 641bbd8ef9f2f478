"""The OpenAI protocol without HTTP: requests in, answers out.

* :func:`parse_request`: a request body (already JSON) validated as a :class:`ChatRequest` or
  :class:`CompletionRequest`; a bad field is a :class:`~dagserve.ParameterError` naming it.
* :func:`refuse_unsupported`: what a graph cannot honour (``n > 1``, tools, logprobs ...) is
  refused, never ignored.
* :func:`graph_payload`: what the graph's ``Input`` receives.
* :class:`Answer`: one completion, as stream chunks (:meth:`Answer.chunk`, one per item the graph
  yields) or as one object (:meth:`Answer.whole`).
* :class:`ModelTable`: which graph serves which model name; :func:`error_document`: OpenAI's
  error shape.

The routes that speak it over HTTP are ``dagserve.http.openai_routes``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_json

from dagserve._errors import GraphError, GraphOutputError, ModelNotFoundError, ParameterError
from dagserve.graph.endpoint import OpenAIEndpoint, OpenAIKind

__all__ = [
    "Answer",
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "ModelTable",
    "Piece",
    "StreamOptions",
    "error_document",
    "graph_payload",
    "parse_request",
    "piece",
    "refuse_unsupported",
]

T = TypeVar("T")
#: The finish reasons an item may give, per kind.
_FINISH = {
    "chat": frozenset({"stop", "length", "content_filter", "tool_calls"}),
    "completions": frozenset({"stop", "length", "content_filter"}),
}


# -- requests ------------------------------------------------------------------------------------------
class _Loose(BaseModel):
    # Fields OpenAI adds later reach the graph in ``extra`` instead of failing the request.
    model_config = ConfigDict(extra="allow", strict=True)


class ChatMessage(_Loose):
    """One message of a chat; ``content`` is text, a list of parts (``{"type": "text", ...}``) or
    ``None`` (an assistant message with tool calls). Other fields (``tool_call_id``,
    ``tool_calls``) are kept."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(_Loose):
    include_usage: bool = False


class _Request(_Loose):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    user: str | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)


class ChatRequest(_Request):
    """A ``POST /v1/chat/completions`` body."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None


class CompletionRequest(_Request):
    """A ``POST /v1/completions`` body (``prompt``: a string, or a list holding one)."""

    prompt: str | list[str]
    suffix: str | None = None
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1)
    logprobs: int | None = None


_MODELS: dict[str, type[_Request]] = {"chat": ChatRequest, "completions": CompletionRequest}


def parse_request(kind: OpenAIKind, body: Any) -> ChatRequest | CompletionRequest:
    """``body`` (parsed JSON) as the request of ``kind``; :class:`ParameterError` (400) naming
    the first bad field otherwise."""
    if not isinstance(body, dict):
        raise ParameterError(f"The request body must be a JSON object, not {type(body).__name__}.", code="invalid_type")
    try:
        request = _MODELS[kind].model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        params = [_param(e["loc"]) for e in errors]
        said = "; ".join(f"{p or 'body'}: {e['msg']}" for p, e in zip(params, errors, strict=True))
        raise ParameterError(f"Invalid request: {said}.", param=params[0] or None, code="invalid_value") from None
    if request.stream_options is not None and not request.stream:
        raise ParameterError(
            "stream_options is only allowed with 'stream': true.", param="stream_options", code="invalid_value"
        )
    return request  # type: ignore[return-value]


def _param(loc: tuple[Any, ...]) -> str:
    """``("messages", 0, "role")`` -> ``"messages[0].role"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def refuse_unsupported(request: ChatRequest | CompletionRequest, endpoint: OpenAIEndpoint) -> None:
    """:class:`ParameterError` (400) for a parameter the graph cannot honour: several choices,
    log probabilities, tools for a graph served without ``tools=True``, ``echo``, ``best_of``."""
    if request.n > 1:
        _refuse("n", f"n={request.n}: this server answers one choice per request; send n=1 (or leave it out).", _VALUE)
    if isinstance(request, ChatRequest):
        if request.logprobs or request.top_logprobs is not None:
            _refuse("logprobs", "logprobs and top_logprobs are not supported by this model; leave them out.")
        if request.functions is not None or request.function_call is not None:
            param = "functions" if request.functions is not None else "function_call"
            _refuse(param, f"{param} is not supported (it is deprecated); use tools, with a model that takes them.")
        if not endpoint.tools:
            for param in ("tools", "tool_choice", "parallel_tool_calls"):
                if getattr(request, param) is not None:
                    _refuse(param, f"The model {endpoint.model!r} does not take tools; leave out {param}.")
        return
    if isinstance(request.prompt, list) and len(request.prompt) != 1:
        _refuse("prompt", f"prompt holds {len(request.prompt)} prompts; this server answers one per request.", _VALUE)
    if request.echo:
        _refuse("echo", "echo is not supported by this model; leave it out.")
    if request.best_of is not None and request.best_of > 1:
        _refuse("best_of", f"best_of={request.best_of}: this server generates one completion; send best_of=1.", _VALUE)
    if request.logprobs is not None:
        _refuse("logprobs", "logprobs is not supported by this model; leave it out.")


_VALUE = "unsupported_value"


def _refuse(param: str, message: str, code: str = "unsupported_parameter") -> None:
    raise ParameterError(message, param=param, code=code)


#: Fields the door itself honours (or refuses): the graph does not see them.
_DOOR_FIELDS = frozenset(
    {"n", "stream_options", "logprobs", "top_logprobs", "best_of", "echo", "max_completion_tokens", "functions",
     "function_call"}
)
_TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")
# The fields the graph sees and their defaults, per request kind (tools only with tools=True);
# the fields the door knows (the others go to ``extra``).
_CHAT_DEFAULTS = {
    f: i.default for f, i in ChatRequest.model_fields.items() if f not in _DOOR_FIELDS and f not in _TOOL_FIELDS
}
_COMPLETION_DEFAULTS = {f: i.default for f, i in CompletionRequest.model_fields.items() if f not in _DOOR_FIELDS}
_CHAT_KNOWN = frozenset(ChatRequest.model_fields)
_COMPLETION_KNOWN = frozenset(CompletionRequest.model_fields)


def graph_payload(
    body: dict[str, Any], request: ChatRequest | CompletionRequest, endpoint: OpenAIEndpoint
) -> dict[str, Any]:
    """What the graph's ``Input`` receives from the request ``body`` (validated as ``request``):
    its fields as the client sent them (``None`` when absent; ``messages`` as sent), ``stop`` as a
    list, ``max_tokens`` also from ``max_completion_tokens``, ``prompt`` as one string,
    ``tools``/``tool_choice`` only for a graph served with ``tools=True``, and every field this
    module does not know in ``extra``."""
    chat = isinstance(request, ChatRequest)
    defaults = _CHAT_DEFAULTS if chat else _COMPLETION_DEFAULTS
    known = _CHAT_KNOWN if chat else _COMPLETION_KNOWN
    payload = dict(defaults)
    extra: dict[str, Any] = {}
    for name, value in body.items():  # validated already: the client's own values
        if name in defaults:
            payload[name] = value
        elif name not in known:
            extra[name] = value
    if endpoint.tools:
        payload.update({name: body.get(name) for name in _TOOL_FIELDS})
    if chat:
        if request.max_completion_tokens is not None:  # type: ignore[union-attr]
            payload["max_tokens"] = request.max_completion_tokens  # type: ignore[union-attr]
    else:
        prompt = payload["prompt"]
        payload["prompt"] = prompt[0] if isinstance(prompt, list) else prompt
    stop = payload["stop"]
    payload["stop"] = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    payload["extra"] = extra
    return payload


# -- answers ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """One item of a graph's output, understood: its text, and what it says of the end."""

    content: str
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    tool_calls: list[dict[str, Any]] | None = None


_PIECE_KEYS = frozenset({"content", "finish_reason", "usage", "tool_calls"})


def piece(item: Any, kind: OpenAIKind = "chat") -> Piece:
    """An item the graph yielded (text, or a dict of ``content``, ``finish_reason``, ``usage``
    and, for chat, ``tool_calls``) as a :class:`Piece`; :class:`GraphOutputError` otherwise."""
    if isinstance(item, str):
        return Piece(item)
    if not isinstance(item, dict):
        raise GraphOutputError(
            f"An OpenAI model's graph yields text or dicts with 'content', got {_short(item)} "
            f"({type(item).__name__}); fix the graph's output node."
        )
    unknown = set(item) - _PIECE_KEYS if kind == "chat" else set(item) - (_PIECE_KEYS - {"tool_calls"})
    if unknown:
        raise GraphOutputError(
            f"The graph yielded a dict with {sorted(unknown)}; an OpenAI {kind} item has only "
            f"{sorted(_PIECE_KEYS if kind == 'chat' else _PIECE_KEYS - {'tool_calls'})}."
        )
    content = item.get("content") or ""
    finish = item.get("finish_reason")
    if not isinstance(content, str) or (finish is not None and finish not in _FINISH[kind]):
        raise GraphOutputError(
            f"The graph yielded {_short(item)}: 'content' must be text and 'finish_reason' one of "
            f"{sorted(_FINISH[kind])}."
        )
    calls = item.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
        raise GraphOutputError(f"The graph yielded tool_calls={_short(calls)}; give a list of tool call dicts.")
    return Piece(content, finish, _usage(item.get("usage")), calls)


def _usage(value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    counts = {k: value.get(k) for k in ("prompt_tokens", "completion_tokens")} if isinstance(value, dict) else {}
    if not counts or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
        raise GraphOutputError(
            f"The graph yielded usage={_short(value)}; give {{'prompt_tokens': int, 'completion_tokens': int}}."
        )
    return {**counts, "total_tokens": counts["prompt_tokens"] + counts["completion_tokens"]}  # type: ignore[operator]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_ROLE_CHOICE = (
    b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]'
)


class Answer:
    """One completion of the model ``model``: the chunks of its stream or the whole object.

    Streamed: :meth:`opening` (chat: the assistant's role), then :meth:`chunk` per item the graph
    yields, then :meth:`closing` (the finish reason, and the usage when ``include_usage``).
    Whole: :meth:`whole` over every item. Usage is the graph's last ``usage``; without one,
    ``completion_tokens`` counts the items that held text and ``prompt_tokens`` is 0.
    """

    def __init__(self, kind: OpenAIKind, model: str, *, request_id: str, include_usage: bool = False) -> None:
        self.kind = kind
        self.model = model
        self.include_usage = include_usage
        chat = kind == "chat"
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None
        self.items = 0
        kind_of_chunk = self.object + ".chunk" if chat else self.object
        head = {"id": self.id, "object": kind_of_chunk, "created": self.created, "model": model}
        # The JSON of a text chunk around its content, so that a token costs one string encoding.
        self._start = to_json(head)[:-1]
        choice = b',"choices":[{"index":0,"delta":{"content":' if chat else b',"choices":[{"index":0,"text":'
        opened = self._start + choice
        closed = b',"logprobs":null,"finish_reason":null}]'
        self._text_chunk = (opened, b"}" + closed if chat else closed)
        self._tail = b',"usage":null}' if include_usage else b"}"
        self._head = head

    def opening(self) -> bytes | None:
        """The JSON of the first chunk: the assistant's role (chat); ``None`` for completions."""
        if self.kind != "chat":
            return None
        return self._start + _ROLE_CHOICE + self._tail

    def chunk(self, item: Any) -> bytes:
        """The JSON of the chunk for one item the graph yielded."""
        if type(item) is str:  # the usual token: no dict built
            if item:
                self.items += 1
            return self._text_chunk[0] + to_json(item) + self._text_chunk[1] + self._tail
        p = self._take(piece(item, self.kind))
        delta: dict[str, Any] = {"content": p.content}
        if p.tool_calls is not None:
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(p.tool_calls)]
        return to_json(self._chunk(delta, None))

    def closing(self) -> list[bytes]:
        """The JSON of the last chunks: the finish reason, then (``include_usage``) the usage alone."""
        final = [to_json(self._chunk({}, self.finish_reason or "stop"))]
        if self.include_usage:
            final.append(to_json({**self._head, "choices": [], "usage": self.usage_counts()}))
        return final

    def whole(self, items: Iterable[Any]) -> dict[str, Any]:
        """The answer as one object, from every item of the graph's output."""
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for item in items:
            p = self._take(piece(item, self.kind))
            texts.append(p.content)
            calls.extend(p.tool_calls or ())
        text = "".join(texts)
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            choice: dict[str, Any] = {"index": 0, "message": message}
        else:
            choice = {"text": text, "index": 0}
        choice.update(logprobs=None, finish_reason=self.finish_reason or ("tool_calls" if calls else "stop"))
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": [choice], "usage": self.usage_counts()}

    def usage_counts(self) -> dict[str, int]:
        if self.usage is not None:
            return self.usage
        return {"prompt_tokens": 0, "completion_tokens": self.items, "total_tokens": self.items}

    def _take(self, p: Piece) -> Piece:
        if p.content:
            self.items += 1
        if p.finish_reason is not None:
            self.finish_reason = p.finish_reason
        if p.usage is not None:
            self.usage = p.usage
        return p

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}
        out = {**self._head, "choices": [choice]}
        if self.include_usage:
            out["usage"] = None
        return out


# -- models and errors ---------------------------------------------------------------------------------
class ModelTable(Generic[T]):
    """Which target (a deployed graph) serves which model name, per route kind."""

    def __init__(self) -> None:
        self._by_kind: dict[str, list[tuple[OpenAIEndpoint, T]]] = {"chat": [], "completions": []}
        self._exact: dict[tuple[str, str], tuple[OpenAIEndpoint, T]] = {}  # (kind, name): the usual lookup

    def add(self, endpoint: OpenAIEndpoint, target: T) -> None:
        """Serve ``endpoint``'s names with ``target``; :class:`GraphError` for a name served twice."""
        for other, _ in self._by_kind[endpoint.kind]:
            clash = [n for n in endpoint.names if other.accepts(n)] + [n for n in other.names if endpoint.accepts(n)]
            # two prefixes overlap when one starts with the other ("ft-*" and "ft-a*" both take "ft-ab")
            clash += [p + "*" for p in endpoint.prefixes for q in other.prefixes if p.startswith(q) or q.startswith(p)]
            if clash:
                name = clash[0]
                raise GraphError(
                    f"The OpenAI {endpoint.kind} model {name!r} is served by two graphs; give each graph "
                    "its own model names (model= and models=)."
                )
        self._by_kind[endpoint.kind].append((endpoint, target))
        for name in endpoint.names:
            self._exact[(endpoint.kind, name)] = (endpoint, target)

    def __bool__(self) -> bool:
        return any(self._by_kind.values())

    def find(self, kind: OpenAIKind, name: str) -> tuple[OpenAIEndpoint, T]:
        """The endpoint and target serving ``name`` on the ``kind`` route; :class:`ModelNotFoundError`."""
        found = self._exact.get((kind, name))
        if found is not None:
            return found
        for endpoint, target in self._by_kind[kind]:
            if endpoint.accepts(name):
                return endpoint, target
        other = "completions" if kind == "chat" else "chat"
        if any(e.accepts(name) for e, _ in self._by_kind[other]):
            route = "/v1/chat/completions" if other == "chat" else "/v1/completions"
            raise ModelNotFoundError(f"The model {name!r} is a {other} model here; call it at {route}.")
        raise ModelNotFoundError(
            f"The model {name!r} does not exist here; the models are {sorted(self.names())} (GET /v1/models)."
        )

    def names(self) -> list[str]:
        """Every exact model name, each once, in the order graphs were added."""
        return list(dict.fromkeys(n for pairs in self._by_kind.values() for e, _ in pairs for n in e.names))

    def listing(self, created: int) -> dict[str, Any]:
        """The answer of ``GET /v1/models``."""
        return {"object": "list", "data": [model_object(n, created) for n in self.names()]}

    def __iter__(self) -> Iterator[tuple[OpenAIEndpoint, T]]:
        for pairs in self._by_kind.values():
            yield from pairs


def model_object(name: str, created: int) -> dict[str, Any]:
    """One model as ``GET /v1/models`` lists it."""
    return {"id": name, "object": "model", "created": created, "owned_by": "dagserve"}


#: Error types and codes by status, for errors that do not bring their own code.
_ERROR_KINDS = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    408: ("invalid_request_error", "request_timeout"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "overloaded"),
    504: ("server_error", "timeout"),
}


def error_document(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``: a 4xx is an
    ``invalid_request_error``, a 5xx a ``server_error``; ``code`` defaults by status."""
    kind, default_code = _ERROR_KINDS.get(status, ("invalid_request_error" if status < 500 else "server_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code or default_code}}
