"""``dagserve.serve``: deploy, serve with uvicorn, drain on SIGTERM within a bound, tear down."""

from __future__ import annotations

from typing import Any

import concurrent.futures
import contextlib
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import dagserve
import dagserve.http.hosts as hosts
import dagserve.http.connections as proto
from dagserve.http.settings import ServerOptions
import dagserve.http.server as srv
from tests import ingress_graphs as g

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import dagserve, dagserve.http.server as srv
from tests.ingress_graphs import SLOW
made = []
real_deploy = srv.deploy
def spy(*args, **kwargs):
    app = real_deploy(*args, **kwargs)
    made.append(app)
    return app
srv.deploy = spy
dagserve.serve(SLOW, port=0, shutdown_timeout_s=3, log_level="warning",
               on_ready=lambda url: print("READY", url, flush=True))
print("RETURNED closed=%s" % all(a.closed for a in made), flush=True)
"""


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return q


def wait_for(q: queue.Queue[str], prefix: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no line starting with {prefix!r} within {timeout} s")


@pytest.mark.http
def test_sigterm_drains_requests_in_flight_within_the_bound_then_tears_down() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out = lines_of(proc)
        url = wait_for(out, "READY").split()[1]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            short = pool.submit(httpx.post, url, json={"x": 1, "seconds": 1.0}, timeout=20)
            long = pool.submit(httpx.post, url, json={"x": 2, "seconds": 30.0}, timeout=20)
            # Both are running (a fixed pause was too short on a loaded machine: connection refused).
            deadline = time.monotonic() + 20
            while 'dagserve_requests_in_flight{graph="slow"} 2.0' not in httpx.get(url + "metrics", timeout=10).text:
                assert time.monotonic() < deadline, "the two requests never ran together"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            # the short request finishes normally although shutdown has begun
            r = short.result(timeout=20)
            assert r.status_code == 200 and r.json() == 1
            # the long one is cut when the 3 s bound runs out, not after its 30 s, with a clear 503
            cut = long.result(timeout=20)
            assert cut.status_code == 503
            assert cut.json()["error"]["type"] == "ShuttingDown"
        assert proc.wait(timeout=20) == 0  # well before the long request's 30 s
        assert wait_for(out, "RETURNED") == "RETURNED closed=True"
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_taken_port_raises_and_tears_the_graphs_down(shared_ray: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # On the default backend, Ray: the suite's shared one (tests/conftest.py), where tearing the
    # graph down deletes it from Serve, instead of a Ray started and stopped for this test alone.
    made: list[dagserve.App] = []
    real = srv.deploy

    def spy(*args: object, **kwargs: object) -> dagserve.App:
        app = real(*args, **kwargs)  # type: ignore[arg-type]
        made.append(app)
        return app

    monkeypatch.setattr(srv, "deploy", spy)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(dagserve.DagserveError, match=f"could not start on 127.0.0.1:{port}"):
            dagserve.serve(g.typed(), port=port, log_level="critical")
    assert len(made) == 1 and made[0].closed
    from ray import serve

    assert "typed" not in serve.status().applications  # deleted from the Ray it ran on


def test_several_graphs_are_deployed_together_and_share_their_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Like dagserve.deploy([...]): one App of both graphs, so a node they share runs once."""
    from dagserve.backends.local import LocalBackend

    from .. import handle_graphs as hg

    served: dict[str, Any] = {}

    def run_server(web: Any, options: Any, **kw: Any) -> None:  # serve "until stopped": call both graphs, then stop
        served.update(web.state.dagserve.apps)
        served["a"] = served["ga"].call(5)
        served["b"] = served["gb"].call({"x": 1})

    monkeypatch.setattr(srv, "run_server", run_server)
    ga, gb, _ = hg.shared_graphs()
    backend = LocalBackend()
    dagserve.serve([ga, gb], backend=backend)  # a backend instance runs both
    assert (served["a"], served["b"]) == ({"a": 1}, {"b": 2})  # one Counter: the count runs on
    assert served["ga"].backend is served["gb"].backend is backend
    assert served["ga"].closed and served["gb"].closed


def test_apps_passed_in_stay_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(srv, "run_server", lambda web, options, **kw: None)  # serve "until stopped": at once
    app = dagserve.deploy(g.typed(), backend="local")
    try:
        dagserve.serve(app)
        assert not app.closed
        assert app.call({"x": 1}) == {"y": 2, "tag": "a"}
    finally:
        app.shutdown()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ([], "empty list"),
        ("graph", "takes a Graph, an App or a list"),
        ([g.typed(), 3], "takes Graphs or Apps, got 3"),
        ([g.typed(), g.typed()], "Several graphs are named 'typed'"),
    ],
)
def test_bad_arguments_fail_before_deploying(value: object, match: str) -> None:
    with pytest.raises(dagserve.GraphError, match=match):
        dagserve.serve(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_in_flight", 0), ("header_timeout_s", 0), ("shutdown_timeout_s", -1), ("body_timeout_s", "5")],
)
def test_invalid_limits_fail_before_deploying(monkeypatch: pytest.MonkeyPatch, option: str, value: object) -> None:
    deployed: list[object] = []
    monkeypatch.setattr(srv, "deploy", lambda *a, **k: deployed.append(a))
    with pytest.raises(dagserve.OptionsError, match=f"{option}={value!r} is invalid"):
        dagserve.serve(g.typed(), **{option: value})
    assert deployed == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert hosts.is_loopback(host) is loopback


def test_binding_beyond_loopback_without_a_token_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dagserve.serve"):
        assert hosts.warn_if_exposed("0.0.0.0", None) is True
        assert hosts.warn_if_exposed("0.0.0.0", "secret") is False
        assert hosts.warn_if_exposed("127.0.0.1", None) is False
    [record] = caplog.records
    assert "SERVING ON 0.0.0.0 WITHOUT A TOKEN" in record.getMessage()
    assert "DAGSERVE_TOKEN" in record.getMessage()


def test_serve_warns_before_listening_beyond_loopback_without_a_token(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    listened: list[str] = []
    monkeypatch.setattr(srv, "run_server", lambda web, options, **kw: listened.append(options.host))
    monkeypatch.delenv("DAGSERVE_TOKEN", raising=False)
    with caplog.at_level(logging.WARNING, logger="dagserve.serve"):
        dagserve.serve(g.typed(), host="0.0.0.0", backend="local")
        dagserve.serve(g.typed(), host="0.0.0.0", backend="local", token="t")
    assert listened == ["0.0.0.0", "0.0.0.0"]
    mine = [r for r in caplog.records if r.name == "dagserve.serve"]
    assert [r.getMessage().count("WITHOUT A TOKEN") for r in mine] == [1]


def test_url_for_shows_an_address_a_browser_can_open() -> None:
    assert hosts.url_for("0.0.0.0", 8000) == "http://127.0.0.1:8000/"
    assert hosts.url_for("::", 80) == "http://[::1]:80/"
    assert hosts.url_for("localhost", 1) == "http://localhost:1/"


def test_token_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSERVE_TOKEN", "env")
    assert srv.resolve_token(None, "DAGSERVE_TOKEN") == "env"
    assert srv.resolve_token("arg", "DAGSERVE_TOKEN") == "arg"
    assert srv.resolve_token("", "DAGSERVE_TOKEN") is None  # an empty token never matches "Bearer "
    monkeypatch.delenv("DAGSERVE_TOKEN")
    assert srv.resolve_token(None, "DAGSERVE_TOKEN") is None


# -- the Host check of servers dagserve binds (issue 15) ------------------------------------------------


@pytest.mark.parametrize(
    ("host", "token", "allowed", "expected"),
    [
        ("127.0.0.1", None, None, ()),  # loopback, no token: loopback Hosts only
        ("localhost", None, None, ()),
        ("::1", None, [], ()),
        ("127.0.0.1", None, ["api.example"], ("api.example",)),
        ("127.0.0.1", "t", None, None),  # a token protects it: any Host
        ("0.0.0.0", None, None, None),  # reachable from outside anyway (and warned about)
        ("0.0.0.0", "t", ["api.example", "*.corp.example"], ("api.example", "*.corp.example")),
    ],
)
def test_serve_checks_the_host_header_on_loopback_without_a_token(
    monkeypatch: pytest.MonkeyPatch, host: str, token: str | None, allowed: list[str] | None, expected: object
) -> None:
    served: list[object] = []
    monkeypatch.setattr(srv, "run_server", lambda web, options, **kw: served.append(web.state.dagserve.config.allowed_hosts))
    monkeypatch.delenv("DAGSERVE_TOKEN", raising=False)
    dagserve.serve(g.typed(), host=host, backend="local", token=token, allowed_hosts=allowed, log_level="critical")
    assert served == [expected]


def test_serve_takes_the_token_from_the_environment_for_the_host_check(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[object] = []
    monkeypatch.setattr(srv, "run_server", lambda web, options, **kw: served.append(web.state.dagserve.config.allowed_hosts))
    monkeypatch.setenv("DAGSERVE_TOKEN", "from-env")
    dagserve.serve(g.typed(), backend="local")
    assert served == [None]


@contextlib.contextmanager
def server_process(*argv: str) -> Iterator[queue.Queue[str]]:
    """``python *argv`` from the repository, without this environment's tokens: its stdout
    lines. Stopped with SIGINT (killed if it lingers)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSERVE_TOKEN", "DAGSERVE_ADMIN_TOKEN")}
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield lines_of(proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def running(*options: str) -> Iterator[tuple[str, queue.Queue[str]]]:
    """``dagserve run tests.ingress_graphs:SLOW --backend local --port 0 *options``: its URL and stdout."""
    run = ("-m", "dagserve", "run", "tests.ingress_graphs:SLOW", "--backend", "local", "--port", "0")
    with server_process(*run, *options) as out:
        yield wait_for(out, "dagserve: serving slow at ").split()[4], out


@pytest.mark.http
def test_run_answers_the_allowed_hosts_besides_loopback() -> None:
    with running("--allowed-host", "api.example", "--allowed-host", "*.corp.example") as (url, _):
        for host in ("api.example", "ml.corp.example:8000", "localhost", None):
            r = httpx.post(url, json={"x": 3, "seconds": 0}, headers={"host": host} if host else {}, timeout=10)
            assert r.status_code == 200 and r.json() == 3, host
        for host in ("other.example", "corp.example"):
            refused = httpx.post(url, json={"x": 3, "seconds": 0}, headers={"host": host}, timeout=10)
            assert refused.status_code == 403 and refused.json()["error"]["type"] == "HostNotAllowed", host


@pytest.mark.http
def test_run_access_log_lines_carry_the_request_id() -> None:
    """As docs/cli.md says (issue 15): each ``--access-log`` line ends with the request's id."""
    with running("--access-log") as (url, out):
        for status, headers in ((200, {"x-request-id": "access-1"}), (403, {"host": "other.example"})):
            r = httpx.post(url, json={"x": 3, "seconds": 0}, headers=headers, timeout=10)
            assert r.status_code == status
            line = wait_for(out, "INFO:")
            assert line.endswith(f'"POST / HTTP/1.1" {status} {r.reason_phrase} [{r.headers["x-request-id"]}]'), line


# -- uvicorn's internals (issue 15) -------------------------------------------------------------------------


def test_the_installed_uvicorn_has_what_the_server_extends() -> None:
    import uvicorn
    import uvicorn.config
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    proto.check_uvicorn()
    cycle = sys.modules[AutoHTTPProtocol.__module__].RequestResponseCycle
    logging_config = uvicorn.config.LOGGING_CONFIG
    assert proto.uvicorn_problems(uvicorn.Server, uvicorn.Config, AutoHTTPProtocol, cycle, logging_config) == []


def test_a_uvicorn_without_what_the_server_extends_is_named_precisely() -> None:
    import uvicorn

    class Server:  # a future uvicorn: startup renamed, no signal capture, no .servers
        def __init__(self, config: object) -> None:
            self.config, self.started, self.should_exit = config, False, False

        def run(self) -> None: ...

        async def start(self, sockets: object = None) -> None: ...

        async def shutdown(self, sockets: object = None) -> None: ...

        def handle_exit(self, sig: int, frame: object) -> None: ...

    class Protocol:  # the request cycle under another name
        def __init__(self) -> None:
            self.loop, self.transport, self.current = None, None, None

        def connection_made(self, transport: object) -> None: ...

        def data_received(self, data: bytes) -> None: ...

        def connection_lost(self, exc: object) -> None: ...

    class Cycle:
        def __init__(self, scope: dict[str, object]) -> None:
            self.scope, self.complete = scope, False

    def config(app: object, host: str, port: int, http: object, loop: str) -> None: ...

    problems = proto.uvicorn_problems(Server, config, Protocol, Cycle, {"formatters": {}})
    assert problems == [
        "uvicorn.Server.startup() is missing",
        "uvicorn.Server.capture_signals() is missing",
        "uvicorn.Server no longer has .servers",
        "Protocol (uvicorn's HTTP protocol) no longer has .cycle",
        "its RequestResponseCycle no longer has .response_complete",
        "uvicorn.Server.startup() takes no sockets=",
        "uvicorn.Config takes no lifespan=",
        "uvicorn.Config takes no access_log=",
        "uvicorn.Config takes no log_config=",
        "uvicorn.Config takes no log_level=",
        "uvicorn.Config takes no timeout_graceful_shutdown=",
        "uvicorn.Config takes no server_header=",
        "uvicorn.config.LOGGING_CONFIG has no 'access' formatter and handler",
    ]
    assert uvicorn.Server.startup  # the real one is untouched


def test_the_server_refuses_to_start_on_a_uvicorn_it_cannot_extend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proto, "uvicorn_problems", lambda *a: ["uvicorn.Server.capture_signals() is missing"])
    proto.check_uvicorn.cache_clear()
    try:
        with pytest.raises(dagserve.DagserveError, match=r"cannot run on uvicorn .*capture_signals\(\) is missing.*"
                           r"pip install 'uvicorn\[standard\]>=0\.30,<0\.55'"):
            proto.make_server(object(), ServerOptions(host="127.0.0.1", port=0))
        app = dagserve.deploy(g.typed(), backend="local")
        with pytest.raises(dagserve.DagserveError, match="cannot run on uvicorn"):
            dagserve.serve(app, port=0)
        assert not app.closed  # an App passed in stays running
        app.shutdown()
    finally:
        proto.check_uvicorn.cache_clear()
