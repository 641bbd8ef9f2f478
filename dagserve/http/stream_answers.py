"""Streaming answers: a graph whose output streams, over HTTP.

What the client accepts picks the format (:func:`stream_format`):

* ``text/event-stream``, ``*/*`` or no ``Accept``: Server-Sent Events, one ``data:`` line of JSON
  per item; if the stream fails after its first item, an ``event: error`` whose data is the usual
  error body (the node named); always a final ``event: end``.
* ``application/x-ndjson``: one JSON document per line; a failure is a last line holding the
  usual error body (``{"error": {...}}``).
* ``application/json``: the items collected into one JSON list (an ordinary answer).

The first item is awaited before the answer starts, so that a failure before it (a bad payload,
a node error, the request deadline) is an ordinary error answer with its status code. After it,
items are written as they come: each write waits for the connection to take it (uvicorn pauses a
writer whose client reads slowly), so a slow client slows the generator, and a client that hangs
up cancels the stream, which stops the generator at its next step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

from dagserve.http.errors import error_from_exception
from dagserve.http.jsonio import dump_json
from dagserve.http.connections import SCOPE_HANGUP, HangUpWatch, cancel_on_hang_up
from dagserve.observe.logs import log_failure

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

__all__ = ["EVENT_STREAM", "NDJSON", "Framing", "StreamAnswer", "first_item", "stream_format", "stream_openapi"]

logger = logging.getLogger("dagserve.http")

EVENT_STREAM = "text/event-stream"
NDJSON = "application/x-ndjson"
_JSON = "application/json"


def stream_format(accept: str | None) -> str:
    """The format for a streaming graph's answer: :data:`EVENT_STREAM`, :data:`NDJSON` or
    ``application/json``, by the client's ``Accept`` (the first of them it names with q > 0;
    Server-Sent Events when it names none of them)."""
    if not accept:
        return EVENT_STREAM
    best: tuple[float, int, str] | None = None
    for i, part in enumerate(accept.split(",")):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        kind = {EVENT_STREAM: EVENT_STREAM, "*/*": EVENT_STREAM, "text/*": EVENT_STREAM, NDJSON: NDJSON, _JSON: _JSON}.get(media)
        if kind is not None and q > 0 and (best is None or q > best[0]):
            best = (q, i, kind)
    return best[2] if best is not None else EVENT_STREAM


def stream_openapi(item_schema: Any) -> dict[str, Any]:
    """The OpenAPI ``200`` answer of a graph whose output streams (``item_schema``: one item's)."""
    return {
        "description": (
            "The graph's output streams. By the Accept header: Server-Sent Events (text/event-stream, "
            "*/* or none: one `data:` line of JSON per item, `event: error` with the error body if the "
            "stream fails after its first item, a final `event: end`), NDJSON (one item per line; a "
            "failure is a last line with the error body), or application/json (the items in a list)."
        ),
        "content": {
            EVENT_STREAM: {"schema": {"type": "string", "description": "data: <item as JSON> per item"}},
            NDJSON: {"schema": item_schema},  # a Media Type Object has no description (OpenAPI 3.1)
            _JSON: {"schema": {"type": "array", "items": item_schema}},
        },
    }


async def first_item(items: AsyncIterator[Any]) -> tuple[bool, Any]:
    """``(True, item)`` for the stream's first item, ``(False, None)`` for an empty stream."""
    try:
        return True, await items.__anext__()
    except StopAsyncIteration:
        return False, None


def _event(item: Any) -> bytes:
    return b"data: " + dump_json(item) + b"\n\n"


def _line(item: Any) -> bytes:
    return dump_json(item) + b"\n"


class Framing(Protocol):
    """How a stream's items become bytes: dagserve's SSE and NDJSON (by :func:`stream_format`),
    or a protocol's own (the OpenAI routes' chunks, http/openai_routes.py)."""

    media_type: str

    def opening(self) -> bytes:
        """Written with the first item (or alone, for an empty stream)."""
        ...

    def item(self, item: Any) -> bytes:
        """One item."""
        ...

    def closing(self) -> bytes:
        """Written after the last item."""
        ...

    def failure(self, status: int, body: dict[str, Any], exc: BaseException) -> bytes:
        """Written instead of :meth:`closing` when the stream fails after its first item;
        ``body`` is the error document of :mod:`dagserve.http.errors`."""
        ...


class _EventStream:
    """Server-Sent Events: ``data: <item>`` each, ``event: error`` on a failure, ``event: end``."""

    media_type = EVENT_STREAM
    item = staticmethod(_event)

    def opening(self) -> bytes:
        return b""

    def closing(self) -> bytes:
        return b"event: end\ndata: {}\n\n"

    def failure(self, status: int, body: dict[str, Any], exc: BaseException) -> bytes:
        return b"event: error\ndata: " + dump_json(body) + b"\n\n" + self.closing()


class _Lines:
    """NDJSON: one item per line; a failure is a last line holding the error body."""

    media_type = NDJSON
    item = staticmethod(_line)

    def opening(self) -> bytes:
        return b""

    def closing(self) -> bytes:
        return b""

    def failure(self, status: int, body: dict[str, Any], exc: BaseException) -> bytes:
        return dump_json(body) + b"\n"


_FRAMINGS: dict[str, Framing] = {EVENT_STREAM: _EventStream(), NDJSON: _Lines()}


class StreamAnswer:
    """An ASGI answer that writes a stream's items as they come (``fmt``: :func:`stream_format`,
    or a :class:`Framing` of a protocol's own).

    ``on_end`` is called once when the answer is over (whatever happened). The error written after
    the first item has the shape of :mod:`dagserve.http.errors` (``request_id`` in it).
    """

    def __init__(
        self,
        items: AsyncIterator[Any],
        first: tuple[bool, Any],
        fmt: str | Framing,
        *,
        request_id: str,
        headers: dict[str, str] | None,
        on_end: Callable[[], None],
        debug: bool = False,
    ) -> None:
        self.items = items
        self.first = first
        self.framing = _FRAMINGS[fmt] if isinstance(fmt, str) else fmt
        self.request_id = request_id
        self.headers = headers or {}
        self.on_end = on_end
        self.debug = debug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None  # an ASGI request always runs in a task
        watch: HangUpWatch | None = scope.get(SCOPE_HANGUP)
        watcher: asyncio.Task[bool] | None = None
        hook = task.cancel
        if watch is not None:
            watch.hooks.add(hook)
        else:  # another server: a task waits for http.disconnect
            watcher = asyncio.get_running_loop().create_task(cancel_on_hang_up(receive, task))
        try:
            await self._write(send)
        except asyncio.CancelledError:
            hung_up = (watch is not None and watch.gone and hook not in watch.hooks) or (
                watcher is not None and watcher.done() and not watcher.cancelled() and watcher.result()
            )
            if not hung_up:
                raise  # not the client: the server's shutdown
            task.uncancel()
            logger.debug("request %s: the client disconnected mid-stream; the stream was stopped", self.request_id)
        finally:
            if watch is not None:
                watch.hooks.discard(hook)
            if watcher is not None:
                watcher.cancel()
            try:
                await _close(self.items)
            finally:
                self.on_end()

    async def _write(self, send: Send) -> None:
        framing = self.framing
        encode = framing.item
        headers = [
            (b"content-type", framing.media_type.encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # proxies such as nginx: do not hold the stream back
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        head = framing.opening()
        try:
            has, item = self.first
            if has:
                await send({"type": "http.response.body", "body": head + encode(item), "more_body": True})
                head = b""
                async for item in self.items:
                    await send({"type": "http.response.body", "body": encode(item), "more_body": True})
            tail = head + framing.closing()
        except Exception as exc:  # noqa: BLE001 - after the first item, a failure is an event
            status, body, _ = error_from_exception(exc, request_id=self.request_id, debug=self.debug)
            if status >= 500:  # once, with a failed node's traceback (observe/logs.py)
                log_failure(logger, exc, self.request_id, status)
            tail = head + framing.failure(status, body, exc)
        await send({"type": "http.response.body", "body": tail, "more_body": False})


async def _close(items: AsyncIterator[Any]) -> None:
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()
