"""Streaming steps: which call steps stream, and where a stream may go.

A node whose function or method is a generator (``def ... yield`` or ``async def ... yield``)
streams: its step's value is a stream of items (:mod:`dagserve.runtime.streaming`), not one
value. A stream is read once, as it is produced, so the compiler checks that each one has exactly
one reader that takes it whole: the graph's output (``Graph(stream_node)``) or one top-level
argument of a call step (a node that consumes a stream: an async-iterator parameter).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from dagserve._errors import CompileError
from dagserve.compiler.plan import Ref, Step, refs_in

__all__ = ["check_streams", "is_stream_callable"]


def is_stream_callable(fn: Callable[..., Any]) -> bool:
    """Does calling ``fn`` give a generator (sync or async) rather than a value?"""
    fn = inspect.unwrap(fn)
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


def check_streams(graph_name: str, steps: tuple[Step, ...], output: Any, batched: Callable[[Step], bool]) -> None:
    """Raise :class:`CompileError` unless every stream has one reader that takes it whole.

    ``batched(step)``: does the step's node batch (a batched node cannot stream: its items would
    belong to several requests).
    """
    readers: dict[int, list[str]] = {s.index: [] for s in steps if s.streams}
    if not readers:
        return
    for s in steps:
        if s.streams and batched(s):
            raise CompileError(
                f"Graph {graph_name!r}: node {s.name!r} is a generator and batched (max_batch_size); a "
                "batched node cannot stream. Batch an upstream node instead, or make it return a value."
            )
        for r in _refs_of(s):
            if r in readers:
                if s.kind != "call" or not _whole_arg(s, r):
                    raise CompileError(
                        f"Graph {graph_name!r}: {s.name!r} reads the stream of {steps[r].name!r} other than as "
                        "a whole argument of a call; a stream can only be the graph's output or a node's "
                        "argument (an async iterator of items)."
                    )
                readers[r].append(s.name)
    for r in refs_in(output):
        if r in readers:
            if not isinstance(output, Ref):
                raise CompileError(
                    f"Graph {graph_name!r}: the output puts the stream of {steps[r].name!r} inside a structure; "
                    "a streaming graph's output must be the generator node itself: Graph(node)."
                )
            readers[r].append("the graph's output")
    for r, who in readers.items():
        if len(who) > 1:
            raise CompileError(
                f"Graph {graph_name!r}: the stream of {steps[r].name!r} is read by {', '.join(who)}; a stream "
                "is read once, by one reader. Give each reader its own generator call."
            )


def _refs_of(s: Step) -> list[int]:
    refs = list(s.inputs)
    if isinstance(s.key, Ref) and s.key.index not in refs:
        refs.append(s.key.index)
    return refs


def _whole_arg(s: Step, i: int) -> bool:
    """Is step ``i`` a whole top-level argument of call step ``s``, and read nowhere else in it?"""
    top = [t for t in (*s.args, *s.kwargs.values()) if isinstance(t, Ref) and t.index == i]
    nested = [t for t in (*s.args, *s.kwargs.values()) if not isinstance(t, Ref)]
    return len(top) == 1 and i not in refs_in(nested)
