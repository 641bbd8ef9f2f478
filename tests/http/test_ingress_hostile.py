"""Hostile clients against a server that ``dagserve.serve`` binds itself (issue 15): bodies built
to make parsing slow, and requests through DNS rebinding (a foreign ``Host``).

The server runs in a subprocess, as ``dagserve.serve`` with its defaults (127.0.0.1, no token,
the local backend), so that a server that stops answering fails the test at a client timeout
instead of holding up the test process."""

from __future__ import annotations

import concurrent.futures
import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.http.test_serve import server_process, wait_for

pytestmark = pytest.mark.http

JSON = {"content-type": "application/json"}

SERVER = """
import dagserve
from tests.ingress_graphs import typed
dagserve.serve(typed(), port=0, backend="local", log_level="warning",
               on_ready=lambda url: print("READY", url, flush=True))
"""


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    with server_process("-c", SERVER) as out:
        yield wait_for(out, "READY").split()[1]


def escaped_quotes(n: int) -> bytes:
    """101 '[' then an unterminated string of ``n`` escaped quotes: 64 KB for n=32,000."""
    return b"[" * 101 + b'"' + b'\\"' * n


def test_bodies_built_to_be_slow_are_refused_while_others_are_served(served: str) -> None:
    """Issue 15: a 64 KB body of this shape kept the server from answering anything for over
    10 s. Both sizes get 400 and a normal request sent meanwhile is answered. (That the work
    grows linearly is measured in test_ingress_jsonio.py.)"""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        for n in (32_000, 512_000):  # 64 KB, 1 MB
            hostile = pool.submit(httpx.post, served, content=escaped_quotes(n), headers=JSON, timeout=60)
            normal = httpx.post(served, json={"x": 1}, timeout=10)
            assert normal.status_code == 200 and normal.json() == {"y": 2, "tag": "a"}
            r = hostile.result()
            assert r.status_code == 400, r.text
            assert r.json()["error"]["type"] == "InvalidJSON"
            assert "more than 100 deep" in r.json()["error"]["message"]


def raw_status(url: str, host: bytes | None, request: bytes = b"GET /-/healthz") -> tuple[int, bytes]:
    """``request`` with that Host header (none: HTTP/1.0 without one); the status and body."""
    parts = urlsplit(url)
    head = request + (b" HTTP/1.1\r\nHost: " + host if host is not None else b" HTTP/1.0") + b"\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(head + b"Connection: close\r\n\r\n")
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    head_bytes, _, body = received.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), body


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}", "LOCALHOST", "[::1]:{port}", "[::1]", "127.1.2.3"]
)
def test_loopback_hosts_are_answered(served: str, host: str) -> None:
    port = urlsplit(served).port
    assert raw_status(served, host.format(port=port).encode())[0] == 200


@pytest.mark.parametrize(
    ("request_line", "host"),
    [
        (b"GET /-/healthz", b"rebound.attacker.example:{port}"),
        (b"GET /openapi.json", b"rebound.attacker.example"),
        (b"GET /-/graph", b"localhost.attacker.example"),
        (b"GET /metrics", b"10.0.0.5:{port}"),
        (b"GET /-/healthz", None),
    ],
)
def test_other_hosts_are_refused_on_every_route(served: str, request_line: bytes, host: bytes | None) -> None:
    """Issue 15: a page whose name is re-pointed at 127.0.0.1 reads the answers; its requests
    carry its own name as Host, and get a 403 in the error shape instead."""
    port = str(urlsplit(served).port).encode()
    status, body = raw_status(served, host.replace(b"{port}", port) if host else None, request_line)
    assert status == 403
    error = json.loads(body)["error"]
    assert error["type"] == "HostNotAllowed" and error["status"] == 403
    assert "--allowed-host" in error["message"] and "DNS rebinding" in error["message"]


def test_a_foreign_host_cannot_run_the_graph(served: str) -> None:
    r = httpx.post(served, json={"x": 1}, headers={"host": "rebound.attacker.example"}, timeout=10)
    assert r.status_code == 403 and r.json()["error"]["type"] == "HostNotAllowed"
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    assert httpx.post(served, json={"x": 1}, timeout=10).json() == {"y": 2, "tag": "a"}
