"""The ingress end to end: real uvicorn on 127.0.0.1, real sockets and HTTP clients.

Every status code of the error contract, request ids, mounting in a user's app served by
uvicorn, hostile slow clients, and a graceful stop with a request in flight."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import dagserve
from tests import ingress_graphs as g
from tests.background_server import BackgroundServer

pytestmark = pytest.mark.http

TOKEN = "e2e-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    apps = [
        dagserve.deploy(g.typed(), backend="local"),
        dagserve.deploy(g.failing(), backend="local"),
        dagserve.deploy(g.slow(), backend="local", request_timeout_s=0.3),
        dagserve.deploy(g.overloaded(), backend="local"),
        dagserve.deploy(g.identified(), backend="local"),
    ]
    web = dagserve.asgi_app(apps, token=TOKEN, max_body_bytes=4096, body_timeout_s=0.5)
    with BackgroundServer(web, header_timeout_s=0.5, max_header_bytes=8192) as url:
        yield url
    for a in apps:
        a.shutdown()


def raw(
    url: str, data: bytes, *, pause: float = 0.0, more: bytes = b"", timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """Send bytes on a fresh connection, read until the server closes it: (status, headers, body)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as s:
        s.sendall(data)
        if pause:
            time.sleep(pause)
        if more:
            try:
                s.sendall(more)
            except OSError:
                pass  # the server may already have answered and closed
        received = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def error_of(
    status: int, headers: dict[str, str], body: bytes, expected_status: int, expected_type: str
) -> dict[str, Any]:
    assert status == expected_status, body
    error = json.loads(body)["error"]
    assert error["type"] == expected_type
    assert error["status"] == expected_status
    assert error["request_id"] == headers["x-request-id"]
    return error


def test_every_status_code_of_the_contract(server: str) -> None:
    host = urlsplit(server).netloc.encode()
    with httpx.Client(base_url=server, headers=AUTH, timeout=10) as c:
        seen: dict[int, str] = {}

        def check(r: httpx.Response, status: int, error_type: str, node: str | None = None) -> dict[str, Any]:
            assert r.status_code == status, r.text
            error = r.json()["error"]
            assert (error["type"], error["status"], error["node"]) == (error_type, status, node)
            assert error["request_id"] == r.headers["x-request-id"]
            seen[status] = error_type
            return error

        r = c.post("/typed", json={"x": 21})
        assert r.status_code == 200 and r.json() == {"y": 42, "tag": "a"}
        seen[200] = "ok"
        check(c.post("/typed", content=b"{nope", headers={"content-type": "application/json"}), 400, "InvalidJSON")
        r = c.post("/typed", json={"x": 1}, headers={"authorization": "Bearer wrong"})
        check(r, 401, "Unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        check(c.get("/missing"), 404, "NotFound")
        r = c.get("/typed")
        check(r, 405, "MethodNotAllowed")
        assert r.headers["allow"] == "POST"
        check(
            c.post("/typed", content=b"x" * 5000, headers={"content-type": "application/json"}), 413, "PayloadTooLarge"
        )
        check(c.post("/typed", content=b"{}", headers={"content-type": "text/csv"}), 415, "UnsupportedMediaType")
        error = check(c.post("/typed", json={"x": [1]}), 422, "InputValidationError")
        assert error["errors"][0]["loc"] == ["x"]
        check(c.post("/failing", json=3), 500, "ValueError", node="boom")
        check(c.post("/slow", json={"x": 1, "seconds": 3}), 504, "RequestTimeoutError", node="sleepy")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=10) as ac:
            return await asyncio.gather(*(ac.post("/narrow", json=i) for i in range(4)))

    rs = asyncio.run(burst())
    assert sorted(r.status_code for r in rs) == [200, 200, 503, 503]
    busy = next(r for r in rs if r.status_code == 503)
    check(busy, 503, "OverloadedError", node="narrow")
    assert int(busy.headers["retry-after"]) >= 1

    # A body that stops arriving: 408 at the body deadline, and the connection is closed.
    status, headers, body = raw(
        server,
        b"POST /typed HTTP/1.1\r\nHost: "
        + host
        + b"\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b'\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"x":',
    )
    error_of(status, headers, body, 408, "RequestBodyTimeout")
    assert headers["connection"] == "close"
    seen[408] = "RequestBodyTimeout"

    # Headers that stop arriving: 408 at the header deadline (uvicorn alone would wait for ever).
    status, headers, body = raw(server, b"POST /typed HTTP/1.1\r\nHost: " + host + b"\r\nX-Slow: ")
    error_of(status, headers, body, 408, "RequestHeaderTimeout")

    # A chunked body (no content-length) that grows past the limit: 413 while streaming.
    chunk = b"3e8\r\n" + b" " * 1000 + b"\r\n"
    status, headers, body = raw(
        server,
        b"POST /typed HTTP/1.1\r\nHost: "
        + host
        + b"\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk * 6,
    )
    error_of(status, headers, body, 413, "PayloadTooLarge")

    # A request head over the limit: 431, whether it arrives at once or in pieces.
    big = b"GET /-/healthz HTTP/1.1\r\nHost: " + host + b"\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
    status, headers, body = raw(server, big)
    error_of(status, headers, body, 431, "RequestHeadTooLarge")
    status, headers, body = raw(server, big[:5000], pause=0.1, more=big[5000:])
    error_of(status, headers, body, 431, "RequestHeadTooLarge")
    seen[431] = "RequestHeadTooLarge"
    assert sorted(seen) == [200, 400, 401, 404, 405, 408, 413, 415, 422, 431, 500, 503, 504]


def test_request_id_propagates_over_http(server: str) -> None:
    with httpx.Client(base_url=server, headers=AUTH, timeout=10) as c:
        r = c.post("/whoami", json={"x": 5}, headers={"x-request-id": "trace-42"})
        assert r.headers["x-request-id"] == "trace-42"
        assert r.json() == {"request_id": "trace-42", "x": 5}
        failed = c.post("/failing", json=1, headers={"x-request-id": "trace-43"})
        assert failed.headers["x-request-id"] == failed.json()["error"]["request_id"] == "trace-43"
        fresh = c.post("/whoami", json={"x": 5})
        assert fresh.json()["request_id"] == fresh.headers["x-request-id"] != "trace-42"


def test_hostile_bodies_get_4xx_and_never_5xx(server: str) -> None:
    bodies = [
        b"",
        b"{",
        b"[" * 10_000 + b"]" * 10_000,
        b'{"x": NaN}',
        b'{"x": Infinity}',
        b'{"x": ' + b"1" * 10_000 + b"}",
        b'{"x": "\xff"}',
        b'{"x": 1, "x": 2}',
        b'{"x": "\\ud800"}',
        b"null",
        b"[]",
        b'"x"',
        b'{"x": 1e999}',
    ]
    took = []
    with httpx.Client(base_url=server, headers=AUTH, timeout=10) as c:
        for body in bodies:
            start = time.perf_counter()
            r = c.post("/typed", content=body, headers={"content-type": "application/json"})
            took.append(time.perf_counter() - start)
            assert 400 <= r.status_code < 500, (body[:40], r.text)
            assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    print(f"\nhostile bodies: {len(bodies)} answered 4xx, slowest in {max(took) * 1e3:.1f} ms")  # speed: make bench


def test_mounted_in_a_users_app_under_uvicorn() -> None:
    app = dagserve.deploy(g.typed(), backend="local")

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("home")

    web = Starlette(routes=[Route("/", home), Mount("/ml", app=app.asgi())])
    try:
        with BackgroundServer(web) as url, httpx.Client(base_url=url, timeout=10) as c:
            assert c.get("/").text == "home"
            r = c.post("/ml/", json={"x": 4}, headers={"x-request-id": "m-1"})
            assert r.json() == {"y": 8, "tag": "a"} and r.headers["x-request-id"] == "m-1"
            assert c.get("/ml/-/ready").json()["ready"] is True
            assert c.get("/ml/nothing").json()["error"]["type"] == "NotFound"
            assert c.get("/ml/openapi.json").json()["servers"] == [{"url": "/ml"}]
    finally:
        app.shutdown()


def test_graceful_stop_lets_the_request_in_flight_finish() -> None:
    app = dagserve.deploy(g.slow(), backend="local")
    bg = BackgroundServer(app.asgi(), shutdown_timeout_s=10)
    url = bg.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, url, json={"x": 7, "seconds": 1.0}, timeout=10)
            time.sleep(0.3)  # the request is running
            stopper = threading.Thread(target=bg.stop)
            stopper.start()
            r = pending.result(timeout=10)
            stopper.join(10)
        assert r.status_code == 200 and r.json() == 7
        assert not stopper.is_alive()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "-/healthz", timeout=2)
    finally:
        bg.stop()
        app.shutdown()


async def _trickle(port: int, n: int, body: bool, stop: asyncio.Event, opened: threading.Event) -> int:
    """``n`` connections sending one byte every 0.2 s (of the headers, or of a declared body)."""
    writers = []
    for _ in range(n):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        if body:  # the headers at once; the body never completes
            w.write(
                b"POST /typed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            )
        else:  # a header whose value never ends
            w.write(b"POST /typed HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        writers.append(w)
    opened.set()
    sent = 0
    while not stop.is_set():
        for w in writers:
            if not w.is_closing():
                w.write(b" " if body else b"x")
                sent += 1
        await asyncio.sleep(0.2)
    for w in writers:
        w.close()
    return sent


def _latencies(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(n):
            start = time.perf_counter()
            r = c.post("/typed", json={"x": i})
            out.append(time.perf_counter() - start)
            assert r.status_code == 200
    return out


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def test_two_hundred_trickling_connections_do_not_starve_normal_clients() -> None:
    app = dagserve.deploy(g.typed(), backend="local")
    # Deadlines longer than the test, so the tricklers hold their connections throughout.
    with BackgroundServer(app.asgi(body_timeout_s=60), header_timeout_s=60) as url:
        port = urlsplit(url).port
        assert port is not None
        _latencies(url, 20)  # warm up
        baseline = _latencies(url, 150)
        stop = asyncio.Event()
        opened = threading.Event()
        loop = asyncio.new_event_loop()

        async def both() -> list[int]:
            return await asyncio.gather(
                _trickle(port, 100, False, stop, opened), _trickle(port, 100, True, stop, opened)
            )

        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(loop.run_until_complete(both())))
        t.start()
        try:
            assert opened.wait(20)
            time.sleep(0.5)
            loaded = _latencies(url, 150)
        finally:
            loop.call_soon_threadsafe(stop.set)
            t.join(20)
            loop.close()
        assert sum(result[0]) > 200  # the tricklers really trickled while we measured
    app.shutdown()
    base99, load99 = p99(baseline), p99(loaded)
    print(
        f"\nnormal client latency, 150 requests each: baseline p50 {statistics.median(baseline) * 1e3:.2f} ms "
        f"p99 {base99 * 1e3:.2f} ms; with 200 trickling connections p50 {statistics.median(loaded) * 1e3:.2f} ms "
        f"p99 {load99 * 1e3:.2f} ms"
    )
    # Ordering, not speed: starved clients would wait for the tricklers' 60 s deadlines.
    assert max(loaded) < 30


def test_header_deadline_and_size_on_a_kept_alive_connection(server: str) -> None:
    """The head's clock starts at its first byte on a reused connection too; heads in pieces
    within the deadline pass, one that stops arriving gets 408, one over the limit 431."""
    parts = urlsplit(server)
    get = b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    def answer(reader: Any) -> tuple[int, bytes]:
        status = int(reader.readline().split()[1])
        length = 0
        while (line := reader.readline()) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, reader.read(length)

    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s, s.makefile("rb") as reader:
        s.sendall(get)
        assert answer(reader)[0] == 200
        time.sleep(0.7)  # idle longer than the head deadline: only a started head is timed
        s.sendall(get[:10])
        time.sleep(0.2)
        s.sendall(get[10:])
        assert answer(reader)[0] == 200
        s.sendall(get[:-2])
        status, body = answer(reader)
        assert status == 408 and json.loads(body)["error"]["type"] == "RequestHeaderTimeout"
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s, s.makefile("rb") as reader:
        s.sendall(get)
        assert answer(reader)[0] == 200
        s.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n")
        status, body = answer(reader)
        assert status == 431 and json.loads(body)["error"]["type"] == "RequestHeadTooLarge"
    # Pipelined: a large head arriving in pieces while the request before it still runs.
    slow = json.dumps({"x": 1, "seconds": 0.2}).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s, s.makefile("rb") as reader:
        s.sendall(
            b"POST /slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(slow)).encode()
            + b"\r\n\r\n"
            + slow
        )
        big = b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
        s.sendall(big[:5000])
        time.sleep(0.05)
        s.sendall(big[5000:])
        assert answer(reader)[0] == 200
        status, body = answer(reader)
        assert status == 431 and json.loads(body)["error"]["type"] == "RequestHeadTooLarge"


def test_tricklers_are_cut_at_the_header_and_body_deadlines() -> None:
    app = dagserve.deploy(g.typed(), backend="local")
    with BackgroundServer(app.asgi(body_timeout_s=0.5), header_timeout_s=0.5) as url:
        port = urlsplit(url).port

        async def run() -> list[bytes]:
            async def one(body: bool) -> bytes:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                if body:
                    w.write(
                        b"POST /typed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 50\r\n\r\n"
                    )
                else:
                    w.write(b"POST /typed HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                got = b""
                for _ in range(40):  # at most 8 s of trickling
                    try:
                        w.write(b" " if body else b"x")
                        await w.drain()
                    except (ConnectionError, RuntimeError):
                        pass
                    try:
                        got += await asyncio.wait_for(r.read(65536), 0.2)
                    except TimeoutError:
                        continue
                    except ConnectionError:
                        break  # closed after the answer, while we were still sending
                    if r.at_eof():
                        break
                w.close()
                return got

            return await asyncio.gather(*(one(i % 2 == 0) for i in range(20)))

        answers = asyncio.run(run())
    app.shutdown()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers
    kinds = {json.loads(a.partition(b"\r\n\r\n")[2])["error"]["type"] for a in answers}
    assert kinds == {"RequestHeaderTimeout", "RequestBodyTimeout"}  # cut: a client that trickles to the end gets no 408


def read_answer(reader: Any) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer (with a Content-Length) from a socket's file: status, headers, body."""
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, reader.read(int(headers.get("content-length", 0)))


def test_a_client_that_sends_its_whole_body_first_reads_the_413() -> None:
    """Issue 15: urllib (as requests) sends the whole body before reading; an 11 MiB body got
    'Connection reset by peer' instead of the 413. The rest is now read and dropped first."""
    app = dagserve.deploy(g.echoing(), backend="local")
    try:
        with BackgroundServer(app.asgi()) as url:  # the default limit, 10 MiB
            body = b" " * (11 * 1024 * 1024)
            request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=30)
            assert info.value.code == 413
            error = json.loads(info.value.read())["error"]
            assert error["type"] == "PayloadTooLarge" and "11534336 bytes" in error["message"]
            assert error["request_id"] == info.value.headers["x-request-id"]
    finally:
        app.shutdown()


def test_a_client_waiting_for_100_continue_gets_the_413_without_sending() -> None:
    app = dagserve.deploy(g.echoing(), backend="local")
    try:
        with BackgroundServer(app.asgi(max_body_bytes=1000)) as url:
            parts = urlsplit(url)
            with socket.create_connection((parts.hostname, parts.port), timeout=10) as s, s.makefile("rb") as r:
                s.sendall(
                    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1500\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                status, headers, body = read_answer(r)  # not "100 Continue": the body is not wanted
                assert status == 413 and headers["connection"] == "close"
                assert json.loads(body)["error"]["type"] == "PayloadTooLarge"
    finally:
        app.shutdown()


def test_an_answer_before_the_body_leaves_the_connection_in_step() -> None:
    """A 401 answered before the body: the body is read and dropped, so the next request on the
    connection is answered (the body was once taken for the next request's head: 431)."""
    app = dagserve.deploy(g.echoing(), backend="local")
    try:
        web = app.asgi(token=TOKEN, max_body_bytes=64 * 1024)
        with BackgroundServer(web, max_header_bytes=8192) as url:
            parts = urlsplit(url)
            body = json.dumps(["x" * 20_000]).encode()  # larger than a head may be
            head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
            with socket.create_connection((parts.hostname, parts.port), timeout=10) as s, s.makefile("rb") as r:
                s.sendall(head + b"Authorization: Bearer wrong\r\n\r\n")
                time.sleep(0.3)  # ordering only: the body comes after the head was answered (or read)
                s.sendall(body)
                status, headers, _ = read_answer(r)
                assert status == 401 and "connection" not in headers
                s.sendall(head + b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n" + body)
                status, _, answer = read_answer(r)
                assert status == 200 and json.loads(answer) == ["x" * 20_000]
    finally:
        app.shutdown()


def test_max_in_flight_counts_a_request_while_its_body_arrives() -> None:
    """Issue 15: requests were counted only once their body was read and parsed."""
    app = dagserve.deploy(g.echoing(), backend="local")
    try:
        with BackgroundServer(app.asgi(max_in_flight=1, body_timeout_s=20)) as url:
            parts = urlsplit(url)
            with socket.create_connection((parts.hostname, parts.port), timeout=20) as s, s.makefile("rb") as r:
                s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n")
                s.sendall(b"[1,")
                time.sleep(0.5)  # ordering only: the server has the head and waits for the body
                busy = httpx.post(url, json=[3], timeout=10)
                assert busy.status_code == 503, busy.text
                assert busy.json()["error"]["type"] == "OverloadedError" and busy.headers["retry-after"] == "1"
                s.sendall(b"2]")
                status, _, body = read_answer(r)
                assert status == 200 and json.loads(body) == [1, 2]
            assert httpx.post(url, json=[3], timeout=10).json() == [3]  # the slot was given back
    finally:
        app.shutdown()
