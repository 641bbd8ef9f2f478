"""Checks of streaming behaviour, run against an App of ``stream_graphs.chain`` or ``.mixed``
(prepare -> generator -> relay) on each backend, from Python and over real HTTP.

Each returns nothing and asserts; the test modules call them with their own App / server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from dagserve import NodeError, RequestTimeoutError

from .stream_graphs import steps_taken


def wait_until_still(log: str, settle_s: float = 0.5, limit_s: float = 20.0) -> int:
    """The step count once it stopped changing for ``settle_s`` (bounded by ``limit_s``)."""
    end = time.monotonic() + limit_s
    last = steps_taken(log)
    while time.monotonic() < end:
        time.sleep(settle_s)
        now = steps_taken(log)
        if now == last:
            return now
        last = now
    return last


# -- Python ------------------------------------------------------------------------------------------


def check_order(app: Any) -> None:
    assert list(app.stream({"n": 6})) == list(range(6))

    async def read() -> list[Any]:
        return [x async for x in app.astream({"n": 4})]

    assert asyncio.run(read()) == [0, 1, 2, 3]
    assert app.call({"n": 3}) == [0, 1, 2]  # call collects a streaming graph's items


def check_error_mid_stream(app: Any) -> None:
    got: list[Any] = []
    with pytest.raises(NodeError) as info:
        for x in app.stream({"n": 5, "fail_at": 2}):
            got.append(x)
    assert got == [0, 1]
    assert info.value.node in ("produce", "produce_sync")
    assert "failed at item 2" in str(info.value)


def check_close_stops(app: Any, log: str) -> None:
    """Closing the iterator after 3 items stops the generator at its next step."""
    it = app.stream({"n": 1000, "delay": 0.02, "log": log})
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    stopped = wait_until_still(log)
    assert stopped < 20, f"the generator went on after the reader closed: {stopped} steps"


def check_first_item_deadline(app: Any) -> None:
    # The request timeout bounds the time to the first item ...
    with pytest.raises(RequestTimeoutError) as info:
        list(app.stream({"n": 2, "first_delay": 5}, timeout_s=0.5))
    assert "first item" in str(info.value)
    # ... not the whole stream: 0.6 s of items within a 0.4 s request timeout is fine.
    assert list(app.stream({"n": 6, "delay": 0.1}, timeout_s=0.4, stream_timeout_s=30)) == list(range(6))


def check_stream_timeout(app: Any) -> None:
    got: list[Any] = []
    with pytest.raises(RequestTimeoutError) as info:
        for x in app.stream({"n": 1000, "delay": 0.02}, stream_timeout_s=0.6):
            got.append(x)
    assert 0 < len(got) < 1000
    assert "stream_timeout_s" in str(info.value)
    assert info.value.node == "relay"


def check_slow_reader(app: Any, log: str, ahead: int) -> None:
    """A reader that takes its time: the generator stays at most ``ahead`` items in front."""
    it = app.stream({"n": 200, "log": log})
    for read in range(1, 5):
        next(it)
        time.sleep(0.15)
        assert steps_taken(log) - read <= ahead, (steps_taken(log), read, ahead)
    it.close()


# -- HTTP --------------------------------------------------------------------------------------------


def check_http_formats(url: str) -> None:
    body = {"n": 3}
    for accept in (None, "*/*", "text/event-stream"):
        r = httpx.post(url, json=body, headers={"accept": accept} if accept else {}, timeout=60)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.text == "data: 0\n\ndata: 1\n\ndata: 2\n\nevent: end\ndata: {}\n\n"
    r = httpx.post(url, json=body, headers={"accept": "application/x-ndjson"}, timeout=60)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in r.text.splitlines()] == [0, 1, 2]
    r = httpx.post(url, json=body, headers={"accept": "application/json"}, timeout=60)
    assert r.headers["content-type"] == "application/json" and r.json() == [0, 1, 2]


def check_http_error_mid_stream(url: str) -> None:
    r = httpx.post(url, json={"n": 5, "fail_at": 2}, timeout=60)
    assert r.status_code == 200
    events = r.text.split("\n\n")
    assert events[:2] == ["data: 0", "data: 1"]
    assert events[2].startswith("event: error\ndata: ")
    error = json.loads(events[2].split("data: ", 1)[1])["error"]
    assert error["node"] in ("produce", "produce_sync") and error["status"] == 500
    assert error["request_id"] == r.headers["x-request-id"]
    assert events[3] == "event: end\ndata: {}"
    # Before the first item, a failure is an ordinary error answer.
    r = httpx.post(url, json={"n": 5, "fail_at": 0}, timeout=60)
    assert r.status_code == 500 and r.json()["error"]["node"] in ("produce", "produce_sync")
    r = httpx.post(url, json={"n": 5, "fail_at": 2}, headers={"accept": "application/x-ndjson"}, timeout=60)
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[:2] == [0, 1] and lines[2]["error"]["node"] in ("produce", "produce_sync")


def _raw_post(url: str, body: dict[str, Any]) -> socket.socket:
    """Send a POST by hand and return the socket, its answer unread (the test reads what it wants)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    data = json.dumps(body).encode()
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nhost: {parts.hostname}\r\ncontent-type: application/json\r\n"
        f"accept: text/event-stream\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def _read_events(sock: socket.socket, count: int) -> bytes:
    got = b""
    while got.count(b"data: ") < count:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the stream early"
        got += chunk
    return got


def check_http_disconnect(url: str, log: str) -> None:
    """A client that hangs up after 3 items stops the generator."""
    sock = _raw_post(url, {"n": 1000, "delay": 0.02, "log": log})
    _read_events(sock, 3)
    sock.close()
    stopped = wait_until_still(log)
    assert stopped < 100, f"the generator went on after the client left: {stopped} steps"


def check_http_slow_reader(url: str, log: str) -> None:
    """A client that stops reading: the generator stops a bounded number of items ahead (socket
    buffers), far short of the stream's end."""
    pad = 64 * 1024
    sock = _raw_post(url, {"n": 400, "pad": pad, "log": log})
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    _read_events(sock, 1)
    ahead = wait_until_still(log)
    assert ahead < 200, f"{ahead} of 400 items of {pad} bytes produced for a client that read 1"
    sock.close()


def check_http_first_item_deadline(url: str) -> None:
    r = httpx.post(url, json={"n": 2, "first_delay": 10}, timeout=60)
    assert r.status_code == 504
    assert "first item" in r.json()["error"]["message"]
