"""How a graph is served behind a protocol's model name: :class:`OpenAIEndpoint`, the mark that
``dagserve.openai.chat`` and ``dagserve.openai.completions`` put on a graph.

The mark is data only (the graph carries it to its plan, the HTTP layer reads it there): which
OpenAI route the graph answers, under which model names, and whether it takes tools.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from dagserve._errors import GraphError

__all__ = ["OpenAIEndpoint", "OpenAIKind"]

#: The OpenAI routes a graph can answer: ``/v1/chat/completions`` or ``/v1/completions``.
OpenAIKind = Literal["chat", "completions"]
_KINDS = ("chat", "completions")
# A model name as clients send it ("gpt-4o", "ft:base:org:id", "org/model-7b"): no spaces or control characters.
_NAME = re.compile(r"[^\s\x00-\x1f*]{1,256}")


@dataclass(frozen=True)
class OpenAIEndpoint:
    """A graph served as an OpenAI model.

    ``model`` is the name ``GET /v1/models`` lists and clients send; ``models`` holds further
    names the graph answers to: exact names, or a prefix ending in ``*`` (``"ft-*"``: every name
    that starts with ``ft-``, for one graph that serves many fine-tunes and reads the request's
    ``model``). ``tools``: the graph takes ``tools`` and ``tool_choice`` (chat only).
    """

    kind: OpenAIKind
    model: str
    models: tuple[str, ...] = ()
    tools: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise GraphError(f"An OpenAI endpoint is 'chat' or 'completions', not {self.kind!r}.")
        for name in (self.model, *self.models):
            bare = name[:-1] if name is not self.model and isinstance(name, str) and name.endswith("*") else name
            if not isinstance(bare, str) or not _NAME.fullmatch(bare):
                raise GraphError(
                    f"OpenAI model name {name!r} is not usable: give 1 to 256 characters without spaces "
                    "(in models=, a trailing '*' makes a prefix)."
                )
        if self.tools and self.kind != "chat":
            raise GraphError("tools=True is for chat models: /v1/completions has no tools.")

    @cached_property
    def names(self) -> tuple[str, ...]:
        """The exact model names (what ``GET /v1/models`` lists): ``model``, then ``models``
        without the prefixes."""
        return (self.model, *(m for m in self.models if not m.endswith("*")))

    @cached_property
    def prefixes(self) -> tuple[str, ...]:
        """The prefixes of ``models`` (``"ft-*"`` -> ``"ft-"``)."""
        return tuple(m[:-1] for m in self.models if m.endswith("*"))

    def accepts(self, name: str) -> bool:
        """Does this graph answer requests for the model ``name``?"""
        return name in self.names or any(name.startswith(p) for p in self.prefixes)
