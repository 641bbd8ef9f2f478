"""``dagserve.openai.chat`` / ``completions``: a marked copy of the graph, carried to its plan
(dagserve/openai/__init__.py and graph/endpoint.py)."""

from __future__ import annotations

import pytest

import dagserve
from dagserve.graph.endpoint import OpenAIEndpoint


@dagserve.node
def reply(request: dict) -> str:
    return "ok"


def graph(name: str = "g") -> dagserve.Graph:
    with dagserve.Input() as request:
        return dagserve.Graph(reply(request), name=name)


def test_chat_returns_a_marked_copy_that_every_entry_point_takes_as_a_graph() -> None:
    plain = graph()
    chat = dagserve.openai.chat(plain, model="m", models=["alias", "ft-*"])
    assert isinstance(chat, dagserve.Graph) and chat is not plain and plain.openai is None
    assert chat.openai == OpenAIEndpoint("chat", "m", ("alias", "ft-*"))
    assert chat.name == plain.name and chat.output is plain.output
    assert dagserve.compile(chat).openai == chat.openai and dagserve.compile(plain).openai is None
    assert dagserve.openai.completions(graph(), model="t").openai == OpenAIEndpoint("completions", "t")
    with dagserve.deploy(chat, backend="local") as app:
        assert app.plan.openai == chat.openai and app.call({"messages": []}) == "ok"
    with dagserve.deploy([chat, dagserve.openai.completions(graph("h"), model="t")], backend="local") as app:
        assert {name: g.plan.openai.kind for name, g in app.graphs.items()} == {"g": "chat", "h": "completions"}


def test_an_endpoint_says_which_names_it_answers() -> None:
    endpoint = OpenAIEndpoint("chat", "base", ("alias", "ft-*"))
    assert endpoint.names == ("base", "alias") and endpoint.prefixes == ("ft-",)
    assert all(endpoint.accepts(n) for n in ("base", "alias", "ft-", "ft-7b"))
    assert not any(endpoint.accepts(n) for n in ("bas", "ft", "alias2"))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: dagserve.openai.chat(graph(), model=""), "not usable"),
        (lambda: dagserve.openai.chat(graph(), model="two words"), "not usable"),
        (lambda: dagserve.openai.chat(graph(), model="m*"), "not usable"),
        (lambda: dagserve.openai.chat(graph(), model="m", models=["*"]), "not usable"),
        (lambda: dagserve.openai.chat(graph(), model="m", models="ft-*"), "takes a list of model names"),
        (lambda: dagserve.openai.chat("graph", model="m"), "takes a dagserve.Graph, got str"),  # type: ignore[arg-type]
        (lambda: OpenAIEndpoint("completions", "m", tools=True), "tools=True is for chat models"),
        (lambda: OpenAIEndpoint("edits", "m"), "'chat' or 'completions'"),  # type: ignore[arg-type]
        (lambda: dagserve.openai.completions(dagserve.openai.chat(graph(), model="m"), model="m"), "already served"),
    ],
)
def test_marking_mistakes_are_graph_errors(call: object, match: str) -> None:
    with pytest.raises(dagserve.GraphError, match=match):
        call()  # type: ignore[operator]
