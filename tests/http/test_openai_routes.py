"""The OpenAI-compatible routes over real HTTP (uvicorn on 127.0.0.1), local backend: the official
``openai`` client against examples/qa_stream and tests/openai_graphs.py (tests/openai_checks.py;
the Ray backend: tests/backends/test_openai_ray.py), and the protocol's edges with raw requests:
every error under /v1/ in OpenAI's shape, the stream's framing, failures after the first chunk,
tools, the door's protocol label, several models on one server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

import dagserve
from examples.qa_stream import openai_models

from .. import openai_checks as oc
from .. import openai_graphs as og
from ..background_server import BackgroundServer

pytestmark = pytest.mark.http

TOKEN = "sesame"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "qa-stream", "messages": [{"role": "user", "content": "How do bees make honey?"}], "max_tokens": 6}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[list[dagserve.App], str]]:
    apps = [dagserve.deploy(g, backend="local") for g in (*openai_models, og.slow, og.tuned)]
    try:
        with BackgroundServer(dagserve.asgi_app(apps, token=TOKEN, max_body_bytes=64 * 1024)) as url:
            yield apps, url
    finally:
        for app in apps:
            app.shutdown()


def test_the_openai_client_lists_chats_completes_and_is_refused(served: tuple[list[dagserve.App], str]) -> None:
    oc.check_conversation(served[1], TOKEN)


def test_the_openai_clients_cancellation_stops_the_generator(served: tuple[list[dagserve.App], str], tmp_path: Any) -> None:
    apps, url = served
    oc.check_cancel(url, TOKEN, str(tmp_path / "steps.log"))
    assert all(app.in_flight == 0 for app in apps)


def test_the_client_block_of_docs_openai_md_prints_what_the_page_shows(tmp_path: Any) -> None:
    from tests.test_docs import ROOT, blocks

    page = blocks((ROOT / "docs/openai.md").read_text(encoding="utf-8"))
    i = next(i for i, b in enumerate(page) if b.language == "python" and "from openai import OpenAI" in b.code)
    code, shown = page[i].code, page[i + 1]
    assert shown.language == "text"
    apps = [dagserve.deploy(g, backend="local") for g in openai_models]
    try:
        with BackgroundServer(dagserve.asgi_app(apps)) as url:
            script = tmp_path / "client.py"
            script.write_text(code.replace("http://127.0.0.1:8000/", url), encoding="utf-8")
            assert url in script.read_text(encoding="utf-8")
            printed = oc.run_script(str(script))
    finally:
        for app in apps:
            app.shutdown()
    assert [line.rstrip() for line in printed.splitlines()] == [line.rstrip() for line in shown.code.splitlines()]


def _events(text: str) -> list[Any]:
    """The ``data:`` payloads of an OpenAI stream, ``[DONE]`` as a string."""
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_the_stream_as_it_arrives(served: tuple[list[dagserve.App], str]) -> None:
    r = httpx.post(served[1] + "v1/chat/completions", headers=AUTH, json={**CHAT, "stream": True}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 7 + ["length"]  # max_tokens ran out
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert all("usage" not in c for c in chunks)  # only with stream_options.include_usage


def test_a_graph_answering_in_one_piece_streams_one_chunk(served: tuple[list[dagserve.App], str]) -> None:
    body = {"model": "ft-x", "messages": [{"role": "user", "content": "hi there"}], "stream": True,
            "stream_options": {"include_usage": True}}
    events = _events(httpx.post(served[1] + "v1/chat/completions", headers=AUTH, json=body).text)
    assert [e["choices"][0]["delta"] if e != "[DONE]" and e["choices"] else e for e in events] == [
        {"role": "assistant", "content": ""}, {"content": "[ft-x] hi there"}, {}, events[3], "[DONE]",
    ]
    assert events[3]["choices"] == [] and events[3]["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}


def _openai_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert (error["code"], error["param"]) == (code, param) if code is not None else error["param"] == param
    return str(error["message"])


def test_every_error_under_v1_has_openais_shape(served: tuple[list[dagserve.App], str]) -> None:
    url = served[1]
    chat = url + "v1/chat/completions"
    _openai_error(httpx.post(chat, json=CHAT), 401, "invalid_api_key")
    _openai_error(httpx.get(url + "v1/models"), 401, "invalid_api_key")
    _openai_error(httpx.post(chat, headers=AUTH, content=json.dumps(CHAT)), 415, "unsupported_media_type")
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 100_000}]}
    _openai_error(httpx.post(chat, headers=AUTH, json=big), 413, "request_too_large")
    _openai_error(httpx.post(chat, headers={**AUTH, "content-type": "application/json"}, content=b"{"), 400)
    assert "object" in _openai_error(httpx.post(chat, headers=AUTH, json=[1]), 400, "invalid_type")
    _openai_error(httpx.post(chat, headers=AUTH, json={**CHAT, "messages": []}), 400, "invalid_value", "messages")
    _openai_error(httpx.post(chat, headers=AUTH, json={**CHAT, "stream_options": {}}), 400, "invalid_value", "stream_options")
    _openai_error(httpx.post(chat, headers=AUTH, json={**CHAT, "logprobs": True}), 400, "unsupported_parameter", "logprobs")
    _openai_error(httpx.post(url + "v1/completions", headers=AUTH, json={"model": "qa-stream", "prompt": ["a", "b"]}),
                  400, "unsupported_value", "prompt")
    assert "/v1/chat/completions" in _openai_error(
        httpx.post(url + "v1/completions", headers=AUTH, json={"model": "slow", "prompt": "a"}), 404, "model_not_found"
    )
    _openai_error(httpx.get(url + "v1/models/gpt-5", headers=AUTH), 404, "model_not_found")
    _openai_error(httpx.get(url + "v1/nothing", headers=AUTH), 404, "not_found")
    _openai_error(httpx.get(chat, headers=AUTH), 405)
    # a node's own HTTPError (the example refuses an empty question) keeps its status
    empty = {**CHAT, "messages": [{"role": "user", "content": "  "}]}
    assert "no text" in _openai_error(httpx.post(chat, headers=AUTH, json=empty), 400)
    # the dagserve routes keep dagserve's shape
    assert httpx.post(url + "qa_chat", json=CHAT).json()["error"]["status"] == 401


def test_models_one_by_one_and_by_prefix(served: tuple[list[dagserve.App], str]) -> None:
    url = served[1]
    assert httpx.get(url + "v1/models/ft-anything", headers=AUTH).json()["id"] == "ft-anything"
    listed = httpx.get(url + "v1/models", headers=AUTH).json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["qa-stream", "slow", "base"]


def test_the_graph_sees_the_request_fields_and_the_door(served: tuple[list[dagserve.App], str]) -> None:
    apps, url = served
    seen: list[str] = []
    tuned = next(a for a in apps if a.name == "tuned")
    tuned.observers.append(lambda app, ctx, error, s: seen.append(ctx.protocol))
    try:
        r = httpx.post(url + "v1/chat/completions", headers=AUTH, json={"model": "base", "messages": [{"role": "user", "content": "a"}]})
        assert r.json()["choices"][0]["message"]["content"] == "[base] a"
        httpx.post(url + "tuned", headers=AUTH, json={"model": "direct", "messages": [{"role": "user", "content": "a"}]})
    finally:
        tuned.observers.pop()
    assert seen == ["openai", "http"]


# -- graphs that fail, and tools ---------------------------------------------------------------------


@dagserve.node
async def fails_after_one(request: dict[str, Any]) -> AsyncIterator[Any]:
    if request["extra"].get("bad_first"):
        try:
            yield 3.5
        finally:
            with open(request["extra"]["bad_first"], "w") as f:
                f.write("closed")
    yield "first "
    if request["extra"].get("bad_item"):
        yield 42
    raise ValueError("the model ran out of ideas")


@dagserve.node
def calls_a_tool(request: dict[str, Any]) -> dict[str, Any]:
    tool = request["tools"][0]["function"]["name"]
    call = {"id": "call_1", "type": "function", "function": {"name": tool, "arguments": "{}"}}
    return {"tool_calls": [call], "finish_reason": "tool_calls"}


@pytest.fixture(scope="module")
def odd() -> Iterator[str]:
    with dagserve.Input() as r:
        failing = dagserve.openai.chat(dagserve.Graph(fails_after_one(r), name="failing"), model="failing")
    with dagserve.Input() as r:
        tools = dagserve.openai.chat(dagserve.Graph(calls_a_tool(r), name="tools"), model="tools", tools=True)
    with dagserve.deploy(failing, backend="local") as a, dagserve.deploy(tools, backend="local") as b:
        with BackgroundServer(dagserve.asgi_app([a, b])) as url:
            yield url


def test_a_failure_after_the_first_chunk_is_an_error_chunk_without_done(odd: str) -> None:
    body = {"model": "failing", "messages": [{"role": "user", "content": "a"}], "stream": True}
    events = _events(httpx.post(odd + "v1/chat/completions", json=body).text)
    assert events[1]["choices"][0]["delta"]["content"] == "first "
    error = events[-1]["error"]
    assert error["type"] == "server_error" and "ValueError" in error["message"] and "fails_after_one" in error["message"]
    assert "[DONE]" not in events
    events = _events(httpx.post(odd + "v1/chat/completions", json={**body, "bad_item": True}).text)
    assert "yields text or dicts" in events[-1]["error"]["message"]
    # not streamed: the same failure is an ordinary error answer
    r = httpx.post(odd + "v1/chat/completions", json={**body, "stream": False})
    assert "fails_after_one" in _openai_error(r, 500)


def test_a_wrong_first_item_is_an_error_answer_and_the_generator_is_closed(odd: str, tmp_path: Any) -> None:
    closed = tmp_path / "closed"
    body = {"model": "failing", "messages": [{"role": "user", "content": "a"}], "stream": True, "bad_first": str(closed)}
    assert "got 3.5 (float)" in _openai_error(httpx.post(odd + "v1/chat/completions", json=body), 500)
    assert closed.read_text() == "closed"


def test_a_graph_served_with_tools_gets_them_and_answers_with_tool_calls(odd: str) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    body = {"model": "tools", "messages": [{"role": "user", "content": "rain?"}], "tools": tools, "tool_choice": "auto"}
    choice = httpx.post(odd + "v1/chat/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["tool_calls"][0]["function"]["name"] == "weather"
    events = _events(httpx.post(odd + "v1/chat/completions", json={**body, "stream": True}).text)
    assert events[1]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert events[2]["choices"][0]["finish_reason"] == "tool_calls"


def test_two_graphs_claiming_one_model_name_are_refused_before_serving() -> None:
    with dagserve.Input() as r:
        a = dagserve.openai.chat(dagserve.Graph(og.tuned_reply(r), name="a"), model="m")
    with dagserve.Input() as r:
        b = dagserve.openai.chat(dagserve.Graph(og.tuned_reply(r), name="b"), model="x", models=["m*"])
    with dagserve.deploy(a, backend="local") as app_a, dagserve.deploy(b, backend="local") as app_b:
        with pytest.raises(dagserve.GraphError, match="'m' is served by two graphs"):
            dagserve.asgi_app([app_a, app_b])


def test_a_server_at_its_limit_answers_503_in_openais_shape() -> None:
    with dagserve.deploy(og.slow, backend="local") as app, BackgroundServer(dagserve.asgi_app(app, max_in_flight=1)) as url:
        body = {"model": "slow", "messages": [{"role": "user", "content": "a"}], "stream": True, "max_tokens": 400}

        async def both() -> httpx.Response:
            async with httpx.AsyncClient(timeout=60) as client, client.stream("POST", url + "v1/chat/completions", json=body) as held:
                async for _ in held.aiter_bytes():
                    return await client.post(url + "v1/chat/completions", json=body)
            raise AssertionError("the first stream sent nothing")

        _openai_error(asyncio.run(both()), 503, "overloaded")


def test_the_openapi_document_describes_the_v1_routes(served: tuple[list[dagserve.App], str]) -> None:
    from openapi_spec_validator import validate

    doc = httpx.get(served[1] + "openapi.json").json()
    validate(doc)
    assert {"/v1/models", "/v1/models/{model}", "/v1/chat/completions", "/v1/completions"} <= set(doc["paths"])
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/openai.ChatRequest"}
    assert "text/event-stream" in chat["responses"]["200"]["content"] and chat["security"] == [{"bearerAuth": []}]
    assert "messages" in doc["components"]["schemas"]["openai.ChatRequest"]["properties"]


def test_without_a_marked_graph_there_are_no_v1_routes_and_the_404_says_so_in_openais_shape() -> None:
    with dagserve.Input() as r:
        plain = dagserve.Graph(og.tuned_reply(r), name="plain")
    with dagserve.deploy(plain, backend="local") as app, BackgroundServer(app.asgi()) as url:
        assert "/v1/models" not in httpx.get(url + "openapi.json").json()["paths"]
        _openai_error(httpx.get(url + "v1/models"), 404, "not_found")
        body = {"model": "m", "messages": [{"role": "user", "content": "a"}]}
        assert httpx.post(url + "plain", json=body).json()["content"] == "[m] a"  # its own route still works
