"""Unit tests of dagserve/openai/protocol.py: requests validated and refused, the graph's payload,
items as pieces, chunks and whole answers, the model table and the error shape (no HTTP)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dagserve import GraphError
from dagserve.graph.endpoint import OpenAIEndpoint
from dagserve.openai import GraphOutputError, ModelNotFoundError, ParameterError
from dagserve.openai.protocol import (
    Answer,
    ChatRequest,
    CompletionRequest,
    ModelTable,
    error_document,
    graph_payload,
    parse_request,
    piece,
    refuse_unsupported,
)

CHAT = OpenAIEndpoint("chat", "m")
COMPLETIONS = OpenAIEndpoint("completions", "m")
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def chat(**fields: Any) -> ChatRequest:
    request = parse_request("chat", {"model": "m", "messages": MESSAGES, **fields})
    assert isinstance(request, ChatRequest)
    return request


def payload_of(body: dict[str, Any], endpoint: OpenAIEndpoint = CHAT) -> dict[str, Any]:
    """What the graph receives for the request ``body``."""
    request = parse_request(endpoint.kind, body)
    refuse_unsupported(request, endpoint)
    return graph_payload(body, request, endpoint)


def chat_payload(**fields: Any) -> dict[str, Any]:
    return payload_of({"model": "m", "messages": MESSAGES, **fields})


def test_a_chat_request_reaches_the_graph_as_plain_fields_with_the_unknown_ones_in_extra() -> None:
    seen = chat_payload(max_completion_tokens=7, temperature=0.5, stop="\n", user="u1", seed=3, log="/tmp/x", metadata={"a": 1})
    assert seen["messages"] == MESSAGES and seen["model"] == "m"
    assert (seen["max_tokens"], seen["temperature"], seen["stop"], seen["user"], seen["seed"]) == (7, 0.5, ["\n"], "u1", 3)
    assert seen["extra"] == {"log": "/tmp/x", "metadata": {"a": 1}}
    assert seen["stream"] is False and seen["top_p"] is None
    for door_only in ("n", "stream_options", "logprobs", "max_completion_tokens", "tools", "tool_choice"):
        assert door_only not in seen
    json.dumps(seen)  # plain JSON values: it crosses processes on Ray
    # messages as sent, with the fields OpenAI adds (tool_call_id)
    tool = [{"role": "tool", "content": "42", "tool_call_id": "c1"}]
    assert chat_payload(messages=tool)["messages"] == tool
    assert chat_payload(stop=["a", "b"])["stop"] == ["a", "b"] and chat_payload()["stop"] == []
    assert chat_payload(max_tokens=5, stream=True)["max_tokens"] == 5 and chat_payload(stream=True)["stream"] is True


def test_a_completion_request_has_one_prompt() -> None:
    seen = payload_of({"model": "m", "prompt": ["once upon"], "max_tokens": 4, "suffix": "end"}, COMPLETIONS)
    assert seen["prompt"] == "once upon" and seen["suffix"] == "end" and seen["max_tokens"] == 4
    assert "echo" not in seen and "best_of" not in seen and seen["extra"] == {}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"model": "m", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": MESSAGES, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_an_invalid_field_is_a_400_naming_it(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ParameterError) as caught:
        parse_request("chat", body)
    assert caught.value.param == param and caught.value.status_code == 400 and caught.value.code == "invalid_value"


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ParameterError, match="must be a JSON object, not list"):
        parse_request("chat", [1])


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
    ],
)
def test_what_the_graph_cannot_honour_is_refused_never_ignored(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ParameterError) as caught:
        refuse_unsupported(chat(**fields), CHAT)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"prompt": ["a", "b"]}, "prompt"), ({"echo": True}, "echo"), ({"best_of": 3}, "best_of"), ({"logprobs": 2}, "logprobs")],
)
def test_what_a_completions_graph_cannot_honour_is_refused(fields: dict[str, Any], param: str) -> None:
    request = parse_request("completions", {"model": "m", "prompt": "p", **fields})
    with pytest.raises(ParameterError) as caught:
        refuse_unsupported(request, COMPLETIONS)
    assert caught.value.param == param


def test_a_graph_served_with_tools_gets_them() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    endpoint = OpenAIEndpoint("chat", "m", tools=True)
    seen = payload_of({"model": "m", "messages": MESSAGES, "tools": tools, "tool_choice": "auto"}, endpoint)
    assert seen["tools"] == tools and seen["tool_choice"] == "auto" and seen["parallel_tool_calls"] is None


def test_items_are_text_or_dicts_of_known_keys() -> None:
    assert piece("tok").content == "tok"
    p = piece({"content": "x", "finish_reason": "length", "usage": {"prompt_tokens": 2, "completion_tokens": 3}})
    assert (p.content, p.finish_reason, p.usage) == ("x", "length", {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
    assert piece({"finish_reason": "stop"}).content == ""
    for bad, match in (
        (42, "yields text or dicts"),
        ({"text": "x"}, r"\['text'\]"),
        ({"content": 1}, "'content' must be text"),
        ({"finish_reason": "bored"}, "finish_reason"),
        ({"usage": {"prompt_tokens": -1, "completion_tokens": 0}}, "usage"),
        ({"usage": "lots"}, "usage"),
        ({"tool_calls": "f()"}, "tool_calls"),
    ):
        with pytest.raises(GraphOutputError, match=match):
            piece(bad)
    with pytest.raises(GraphOutputError, match="tool_calls"):
        piece({"tool_calls": []}, "completions")


def test_a_streamed_chat_is_the_role_then_one_chunk_per_item_then_the_finish_and_the_usage() -> None:
    answer = Answer("chat", "m", request_id="r1", include_usage=True)
    opening = json.loads(answer.opening() or b"")
    chunks = [json.loads(answer.chunk(item)) for item in ("a", {"content": "b", "finish_reason": "length"}, "")]
    closing = [json.loads(c) for c in answer.closing()]
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks] == [{"content": "a"}, {"content": "b"}, {"content": ""}]
    for c in (opening, *chunks, closing[0]):
        assert (c["id"], c["object"], c["model"], c["usage"]) == ("chatcmpl-r1", "chat.completion.chunk", "m", None)
        assert c["created"] == answer.created
    assert closing[0]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    assert closing[1]["choices"] == [] and closing[1]["usage"] == {"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 2}


def test_a_text_chunk_built_fast_is_the_same_json_as_one_built_from_a_dict() -> None:
    for include_usage in (False, True):
        for kind in ("chat", "completions"):
            answer = Answer(kind, 'm"odel', request_id="r", include_usage=include_usage)  # type: ignore[arg-type]
            text = 'to "ken" \u00e9\n'
            assert json.loads(answer.chunk(text)) == json.loads(answer.chunk({"content": text}))


def test_a_completion_streams_text_without_a_role() -> None:
    answer = Answer("completions", "m", request_id="r2")
    assert answer.opening() is None
    chunk = json.loads(answer.chunk("x"))
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["text"] == "x" and "usage" not in chunk
    final = [json.loads(c) for c in answer.closing()]
    assert len(final) == 1 and final[0]["choices"][0]["finish_reason"] == "stop"


def test_a_whole_answer_joins_the_items() -> None:
    whole = Answer("chat", "m", request_id="r3").whole(["Hel", "lo", {"usage": {"prompt_tokens": 4, "completion_tokens": 2}}])
    assert whole["object"] == "chat.completion" and whole["id"] == "chatcmpl-r3"
    assert whole["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "logprobs": None, "finish_reason": "stop"}]
    assert whole["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tools = Answer("chat", "m", request_id="r4").whole([{"tool_calls": [call]}])
    assert tools["choices"][0]["message"]["tool_calls"] == [call] and tools["choices"][0]["finish_reason"] == "tool_calls"
    text = Answer("completions", "m", request_id="r5").whole(["one piece"])
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "one piece"
    assert text["usage"]["completion_tokens"] == 1


def test_the_model_table_finds_by_name_and_prefix_and_refuses_clashes() -> None:
    table: ModelTable[str] = ModelTable()
    assert not table
    table.add(OpenAIEndpoint("chat", "base", ("ft-*", "alias")), "tuned")
    table.add(OpenAIEndpoint("completions", "base"), "text")
    table.add(OpenAIEndpoint("chat", "other"), "other")
    assert table.find("chat", "ft-42") == (OpenAIEndpoint("chat", "base", ("ft-*", "alias")), "tuned")
    assert table.find("chat", "alias")[1] == "tuned" and table.find("completions", "base")[1] == "text"
    assert table.names() == ["base", "alias", "other"]
    assert [m["id"] for m in table.listing(5)["data"]] == ["base", "alias", "other"]
    with pytest.raises(ModelNotFoundError, match="'other' is a chat model here; call it at /v1/chat/completions"):
        table.find("completions", "other")
    with pytest.raises(ModelNotFoundError, match=r"'gpt' does not exist here; the models are \['alias', 'base', 'other'\]"):
        table.find("chat", "gpt")
    clashes = (
        OpenAIEndpoint("chat", "ft-1"),
        OpenAIEndpoint("chat", "x", ("ft-*",)),
        OpenAIEndpoint("chat", "x", ("ft-a*",)),
        OpenAIEndpoint("chat", "x", ("f*",)),
        OpenAIEndpoint("chat", "x", ("oth*",)),
    )
    for clash in clashes:
        with pytest.raises(GraphError, match="is served by two graphs"):
            table.add(clash, "again")


def test_errors_take_openais_shape() -> None:
    assert error_document(400, "bad", param="n", code="unsupported_value") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "n", "code": "unsupported_value"}
    }
    assert error_document(401, "who?")["error"]["code"] == "invalid_api_key"
    assert error_document(500, "boom")["error"] == {"message": "boom", "type": "server_error", "param": None, "code": None}
    assert error_document(503, "busy")["error"]["code"] == "overloaded"
