"""Reliability guarantees that cut across modules, and the tools of ``make chaos``.

On a real server (uvicorn on 127.0.0.1, local backend): a node that fails, even with
``SystemExit``, never takes the ingress or other requests down; a full node queue answers 503
with ``Retry-After`` at once; nothing from a request is ever unpickled or evaluated; servers
listen on loopback by default. Then ``benchmarks/chaos.py``'s HTTP client, trickling clients,
process finder and figures, each checked against a real server or a hand-made case.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import pickle
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

import dagserve
from benchmarks import chaos
from benchmarks.chaos import HttpClient, Outcome, Row, percentile, recovery_time, windows
from tests.background_server import BackgroundServer

ROOT = Path(__file__).resolve().parents[2]


# -- graphs -------------------------------------------------------------------------------------------


@dagserve.node
async def wait(x: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return x


@dagserve.node
def sync_exit(x: int) -> int:
    raise SystemExit(3)  # e.g. a library calling sys.exit() on a bad input


@dagserve.node
async def async_exit(x: int) -> int:
    raise SystemExit(4)


@dagserve.node(max_batch_size=4, batch_wait_timeout_s=0.001)
async def batch_exit(xs: list[int]) -> list[int]:
    raise SystemExit(5)


@dagserve.node
def broken(x: int) -> int:
    raise ValueError(f"cannot handle {x}")


@dagserve.node
async def echo(payload: Any) -> Any:
    return payload


@dagserve.node(max_ongoing_requests=1, max_queued_requests=2)
async def narrow(x: int) -> int:
    await asyncio.sleep(0.5)
    return x


def failures() -> dagserve.Graph:
    with dagserve.Input() as inp:
        x = inp["x"]
        out = dagserve.switch(
            inp["case"],
            {
                "ok": wait(x, inp["seconds"]),
                "raise": broken(x),
                # Fan-outs: each branch runs in a task of its own.
                "sync_exit": [sync_exit(x), wait(x, 0.0)],
                "async_exit": [async_exit(x), wait(x, 0.0)],
                "batch_exit": batch_exit(x),  # a batch runs in a task of its own
            },
        )
    return dagserve.Graph(out, name="failures")


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


@pytest.fixture
def failures_server() -> Iterator[str]:
    """A fresh server per test: a test that takes it down must not take the next one with it."""
    with dagserve.deploy(failures(), backend="local") as app, BackgroundServer(app.asgi()) as url:
        yield url


# -- failures stay inside their request ---------------------------------------------------------------


@pytest.mark.http
async def test_a_failing_node_leaves_concurrent_requests_and_the_server_untouched(failures_server: str) -> None:
    async with httpx.AsyncClient(base_url=failures_server, timeout=30) as c:
        good = [c.post("/", json={"case": "ok", "x": i, "seconds": 0.2}) for i in range(10)]
        bad = [c.post("/", json={"case": "raise", "x": i}) for i in range(10)]
        answers = await asyncio.gather(*good, *bad)
        assert [r.json() for r in answers[:10]] == list(range(10))
        for i, r in enumerate(answers[10:]):
            assert r.status_code == 500
            error = r.json()["error"]
            assert error["type"] == "ValueError" and error["node"] == "broken"
            assert f"cannot handle {i}" in error["message"]
        assert (await c.post("/", json={"case": "ok", "x": 7, "seconds": 0})).json() == 7


@pytest.mark.http
@pytest.mark.parametrize("case", ["sync_exit", "async_exit", "batch_exit"])
def test_a_node_raising_system_exit_fails_its_request_not_the_server(failures_server: str, case: str) -> None:
    """SystemExit raised in a node, also one running in a task of its own (a fan-out branch, a
    batch), is that node's 500 like any other exception; it must not escape asyncio's task
    machinery and stop the server's event loop (docs/reliability.md, "Faults and retries")."""
    with httpx.Client(base_url=failures_server, timeout=10) as c:
        r = c.post("/", json={"case": case, "x": 1})
        try:
            after = c.post("/", json={"case": "ok", "x": 2, "seconds": 0})
        except httpx.ConnectError as exc:
            pytest.fail(f"the server died with the request: {exc}")
        assert after.json() == 2
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/json", r.text
        error = r.json()["error"]
        assert error["node"] == case and error["type"] == "SystemExit", error


# -- overload -------------------------------------------------------------------------------------------


@pytest.mark.http
async def test_a_full_node_queue_answers_503_with_retry_after_without_waiting() -> None:
    """12 requests at once to a node taking one at a time with two queued: the excess are
    rejected at once (before the first admitted request can finish), the rest all succeed,
    and once the burst is over the node serves again."""
    with dagserve.Input() as inp:
        graph = dagserve.Graph(narrow(inp["x"]), name="narrow")
    with dagserve.deploy(graph, backend="local") as app, BackgroundServer(app.asgi()) as url:
        client = HttpClient(port_of(url))
        try:
            start = time.monotonic()
            outcomes = await asyncio.gather(*(client.post("/", {"x": i}, start, time.monotonic) for i in range(12)))
            again = await client.post("/", {"x": 99}, time.monotonic(), time.monotonic)
        finally:
            await client.close()
    rejected = [o for o in outcomes if o.status == 503]
    admitted = [o for o in outcomes if o.status == 200]
    assert len(admitted) + len(rejected) == 12 and 1 <= len(admitted) <= 4 and rejected
    assert all(o.retry_after is not None and int(o.retry_after) >= 1 for o in rejected)
    assert {(o.error_type, o.node) for o in rejected} == {("OverloadedError", "narrow")}
    # Semantic bound, not a speed target: a rejection never waits for the work ahead of it.
    assert max(o.latency for o in rejected) < min(o.latency for o in admitted)
    assert again.status == 200


# -- nothing from a request is unpickled or evaluated -------------------------------------------------

_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
_FORBIDDEN_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "jsonpickle", "yaml"}
#: The one module allowed to unpickle: the direct transport's protocol, whose frames come only from
#: this user's own processes (0700 directory, 0600 socket, peer uid checked; tests/backends/test_direct.py
#: shows each) or, over TCP, from peers that passed the cluster token's handshake first
#: (backends/ray/direct/auth.py). The transport's other modules load through its ``loads``.
#: Config files (the operator's, never a client's) are YAML read with ``yaml.safe_load`` only.
_YAML_FILES = ("deploy_config.py", "cli/config.py", "cli/build.py", "rayserve/config_files.py")
_UNPICKLING_ALLOWED = {"backends/ray/direct/frames.py": {"pickle"}, **{f: {"yaml"} for f in _YAML_FILES}}
_YAML_SAFE = {"safe_load", "safe_dump"}


def test_dagserve_source_never_unpickles_or_evaluates() -> None:
    """No call to eval/exec/compile/__import__ and no pickle-like ``load``/``loads`` anywhere in the
    package (Ray and the direct transport unpickle what dagserve's own processes send each other,
    never request bytes)."""
    found = []
    files = sorted((ROOT / "dagserve").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        forbidden = _FORBIDDEN_MODULES - _UNPICKLING_ALLOWED.get(path.relative_to(ROOT / "dagserve").as_posix(), set())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in forbidden]
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in _FORBIDDEN_CALLS:
                found.append(f"{path.name}:{node.lineno} calls {func.id}")
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "yaml":
                # yaml.load/unsafe_load/full_load build any object; a plain yaml.dump writes python/
                # tags that only such a load reads back, so it must name its (safe) Dumper.
                named_dumper = func.attr == "dump" and any(k.arg == "Dumper" for k in node.keywords)
                if func.attr not in _YAML_SAFE and not named_dumper:
                    found.append(f"{path.name}:{node.lineno} calls yaml.{func.attr}")
            if isinstance(func, ast.Attribute) and func.attr in {"load", "loads", "unsafe_load", "full_load"}:
                base = func.value
                if isinstance(base, ast.Name) and base.id in forbidden:
                    found.append(f"{path.name}:{node.lineno} calls {base.id}.{func.attr}")
    assert not found, found


class _Exploit:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.http
def test_request_bodies_are_data_never_code(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    with dagserve.Input() as inp:
        graph = dagserve.Graph(echo(inp), name="echo")
    with dagserve.deploy(graph, backend="local") as app, BackgroundServer(app.asgi()) as url, httpx.Client(base_url=url) as c:
        for content_type in ("application/json", "application/octet-stream", "application/python-pickle"):
            r = c.post("/", content=pickle.dumps(_Exploit(marker)), headers={"content-type": content_type})
            assert r.status_code in (400, 415), r.text
            assert r.json()["error"]["status"] == r.status_code
        tricks = {
            "py/object": "os.system",
            "__class__": "subprocess.Popen",
            "__reduce__": ["os.system", ["touch " + str(marker)]],
            "code": "__import__('os').system('touch " + str(marker) + "')",
            "$where": "1 == 1",
        }
        r = c.post("/", json=tricks)
        assert r.status_code == 200 and r.json() == tricks  # echoed back as plain data
    assert not marker.exists()


# -- exposure -------------------------------------------------------------------------------------------


def test_every_way_to_serve_listens_on_loopback_by_default() -> None:
    from dagserve.cli.run import run_command

    assert inspect.signature(dagserve.serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(BackgroundServer).parameters["host"].default == "127.0.0.1"
    host = next(p for p in run_command.params if p.name == "host")
    assert host.default == "127.0.0.1"


# -- the chaos tools ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_server() -> Iterator[str]:
    with dagserve.Input() as inp:
        graph = dagserve.Graph(echo(inp), name="echo")
    with dagserve.deploy(graph, backend="local") as app, BackgroundServer(
        app.asgi(body_timeout_s=0.6), header_timeout_s=0.6
    ) as url:
        yield url


@pytest.mark.http
async def test_chaos_client_reads_what_httpx_reads_and_reuses_connections(echo_server: str) -> None:
    port = port_of(echo_server)
    client = HttpClient(port)
    try:
        answers = [await client.request("POST", "/", {"n": i, "text": "é" * 100}) for i in range(5)]
        status, _, body = await client.request("GET", "/nowhere")
        outcome = await client.post("/", [1, 2], time.monotonic(), time.monotonic)
        assert len(client._idle) == 1  # one connection, kept alive throughout
    finally:
        await client.close()
    async with httpx.AsyncClient(base_url=echo_server) as reference:
        expected = await reference.post("/", json={"n": 4, "text": "é" * 100})
        missing = await reference.get("/nowhere")
    assert [a[0] for a in answers] == [200] * 5
    assert json.loads(answers[-1][2]) == expected.json()
    assert answers[-1][1]["content-type"] == expected.headers["content-type"]
    assert status == missing.status_code == 404 and json.loads(body)["error"]["type"] == "NotFound"
    assert outcome.status == 200 and outcome.error_type is None and outcome.latency >= 0


@pytest.mark.http
async def test_chaos_client_counts_a_refused_connection_as_no_answer() -> None:
    port = chaos.free_port()  # nothing listens there
    client = HttpClient(port, timeout_s=5)
    try:
        outcome = await client.post("/", {"x": 1}, time.monotonic(), time.monotonic)
    finally:
        await client.close()
    assert outcome.status == 0 and Row.of("refused", [outcome]).failed == {"conn": 1}


@pytest.mark.http
async def test_trickling_clients_are_cut_at_the_deadline_while_others_are_served(echo_server: str) -> None:
    """Twenty connections sending their head or body a byte at a time get 408 at the server's
    0.6 s deadlines; a normal client keeps getting answers meanwhile."""
    port = port_of(echo_server)
    until = asyncio.Event()
    tricklers = asyncio.create_task(chaos.trickle(port, 20, until, interval_s=0.1, path="/"))
    client = HttpClient(port)
    try:
        served = []
        for i in range(15):  # about 1.5 s: each trickling connection outlives a deadline
            served.append(await client.post("/", {"i": i}, time.monotonic(), time.monotonic))
            await asyncio.sleep(0.1)
    finally:
        until.set()
        ended = await asyncio.wait_for(tricklers, 10)
        await client.close()
    assert [o.status for o in served] == [200] * 15
    assert ended.get("408", 0) >= 20, ended  # every connection was cut at least once


def test_replica_pids_finds_processes_by_their_ray_title() -> None:
    proc = subprocess.Popen(
        ["bash", "-c", "exec -a 'ray::ServeReplica:chaos_app:Worker' sleep 30"], start_new_session=True
    )
    try:
        found: list[int] = []
        for _ in range(50):  # bounded: exec happens within moments
            found = chaos.replica_pids(os.getpid(), "chaos_app", "Worker")
            if found:
                break
            time.sleep(0.05)
        assert found == [proc.pid]
        assert chaos.replica_pids(os.getpid(), "chaos_app", "Other") == []
        assert chaos.replica_pids(os.getpid(), "chaos_app", "Work") == []  # whole names only
        assert proc.pid in chaos.descendants(os.getpid())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)


def _o(due: float, latency: float, status: int = 200) -> Outcome:
    return Outcome(due=due, latency=latency, status=status)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3 and percentile([], 50) is None


def test_rows_count_successes_rejections_and_failures_by_code() -> None:
    outcomes = [_o(0, 0.010), _o(0, 0.020), _o(0, 0.001, 503), _o(0, 0.002, 503), _o(0, 0.5, 504), _o(0, 0.1, 500), _o(0, 1, 0)]
    row = Row.of("mix", outcomes)
    assert (row.sent, row.succeeded) == (7, 2)
    assert row.rejected == {"503": 2, "504": 1} and row.failed == {"500": 1, "conn": 1}
    assert (row.p50_ms, row.p99_ms, row.p99_rejected_ms) == (10.0, 20.0, 500.0)
    text = chaos.table([row])
    assert "| mix | 7 | 2 | 503:2 504:1 | 500:1 conn:1 | 10.0 / 20.0 | 500.0 | - |" in text


def test_recovery_is_the_start_of_the_first_run_of_healthy_windows() -> None:
    outcomes = [_o(t / 10, 0.3 if t < 25 else 0.01) for t in range(80)]  # slow until 2.5 s
    outcomes.append(_o(4.2, 0.01, 503))  # a rejection breaks the first healthy run
    assert [len(w) for w in windows(outcomes, 1.0, 1.0)] == [10, 10, 10, 11, 10, 10, 10]

    def healthy(group: list[Outcome]) -> bool:
        return all(o.status == 200 and o.latency < 0.1 for o in group)

    # Windows from 1.0 s: slow, slow, ok, 503, ok, ok, ok.
    assert recovery_time(outcomes, 1.0, 1.0, healthy) == 4.0
    assert recovery_time(outcomes, 1.0, 1.0, healthy, consecutive=1) == 2.0
    assert recovery_time([o for o in outcomes if o.status == 200], 1.0, 1.0, healthy) == 2.0
    assert recovery_time(outcomes[:20], 1.0, 1.0, healthy) is None  # never healthy
    assert recovery_time(outcomes[:40], 1.0, 1.0, healthy) == 2.0  # healthy at the end, short run
