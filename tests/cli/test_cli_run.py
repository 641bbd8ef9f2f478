"""``dagserve run MODULE:ATTR``: a real server in a subprocess, and the command's argument handling."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner

import dagserve.cli.run
from dagserve.cli.main import main
from dagserve.cli.run import parse_size
from dagserve.http.admin import token_for_url
from dagserve.http.settings import ADMIN_TOKEN_ENV
from tests.http.test_serve import lines_of, wait_for
from tests.otlp_receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
URL = re.compile(r"http://127\.0\.0\.1:\d+/")


@pytest.fixture(autouse=True)
def private_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Admin token files of the servers started here go to a directory of the test, not the user's."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    return runtime


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dagserve", "run", *args, "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def stop(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    return code, proc.stderr.read()


@pytest.mark.http
def test_run_serves_the_quickstart_graph_until_ctrl_c() -> None:
    proc = start("examples.quickstart:graph", "--backend", "local")
    try:
        line = wait_for(lines_of(proc), "dagserve: serving reviews at ")
        match = URL.search(line)
        assert match is not None, line
        url = match.group(0)
        assert f"API docs: {url}docs" in line
        r = httpx.post(url, json={"text": "What a GREAT film", "lang": "en"}, timeout=10)
        assert r.status_code == 200
        assert r.json() == {"label": "positive", "score": 0.5, "flagged": False}
        assert r.headers["x-request-id"]
        assert httpx.get(url + "-/ready", timeout=10).json()["ready"] is True
        assert httpx.get(url + "docs", timeout=10).status_code == 200
    finally:
        code, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    assert "ready reviews: 5/5 nodes running" in err  # the progress display's last state
    assert "dagserve: stopped." in err


@pytest.mark.http
def test_run_serves_a_list_of_graphs_behind_a_token_from_the_environment() -> None:
    proc = start("tests.ingress_graphs:BOTH", env={"DAGSERVE_TOKEN": "cli-token"})
    try:
        line = wait_for(lines_of(proc), "dagserve: serving typed, echo at ")
        base = URL.search(line).group(0)  # type: ignore[union-attr]
        assert f"{base}typed" in line and f"{base}echo" in line
        assert httpx.post(base + "typed", json={"x": 2}, timeout=10).status_code == 401
        ok = {"authorization": "Bearer cli-token"}
        assert httpx.post(base + "typed", json={"x": 2}, headers=ok, timeout=10).json() == {"y": 4, "tag": "a"}
        assert httpx.get(base, headers=ok, timeout=10).json()["graphs"][1]["name"] == "echo"
    finally:
        code, err = stop(proc, signal.SIGTERM)
    assert code == 0, err


@pytest.mark.http
def test_run_with_json_logs_and_an_otlp_endpoint_exports_the_trace_and_logs_its_id() -> None:
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with Receiver() as receiver:
        proc = start(
            "tests.ingress_graphs:BOTH", "--backend", "local", "--log-format", "json",
            "--otlp-endpoint", receiver.url, env={"OTEL_BSP_SCHEDULE_DELAY": "100"},
        )  # fmt: skip
        try:
            base = json.loads(wait_for(lines_of(proc), "{"))["url"]  # the URL line is a record too
            headers = {"traceparent": f"00-{trace}-{parent}-01", "x-request-id": "cli-json-1"}
            r = httpx.post(base + "typed", json={"x": 2}, headers=headers, timeout=10)
            assert r.status_code == 200 and r.headers["traceparent"].split("-")[1] == trace
            span_id = bytes.fromhex(r.headers["traceparent"].split("-")[2])
            spans = receiver.wait_until(lambda got: len(got) >= 2)  # the request's span and its node's
        finally:
            code, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    request = next(s for s in spans if s.name == "request typed")
    assert request.trace_id.hex() == trace and request.parent_span_id.hex() == parent and request.span_id == span_id
    assert [s.name for s in spans if s.parent_span_id == span_id] == ["node double"]
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    access = next(rec for rec in records if rec["logger"] == "dagserve.access")
    assert access["request_id"] == "cli-json-1" and access["trace_id"] == trace
    assert access["graph"] == "typed" and access["status"] == 200 and set(access["nodes"]) == {"double"}
    started = next(rec for rec in records if rec["message"].startswith("Started server process"))
    assert started["logger"] == "uvicorn.error"  # uvicorn's lines too
    assert not [line for line in err.splitlines() if line.startswith("INFO")], err  # no text log lines left


def only_json(text: str) -> list[dict[str, object]]:
    """Every line of ``text`` parsed as a JSON object (fails on the first that is not one)."""
    records = []
    for line in text.splitlines():
        assert line.startswith("{"), f"not a JSON line: {line!r}"
        records.append(json.loads(line))
    return records


@pytest.mark.http
def test_with_json_logs_every_line_the_command_writes_is_a_json_object() -> None:
    """Issue 30: progress, the admin token's file, the URL and "stopped" were plain lines."""
    proc = start("tests.ingress_graphs:FAILING", "--backend", "local", "--log-format", "json")
    try:
        served = json.loads(wait_for(lines_of(proc), "{"))
        assert httpx.post(served["url"], json=3, timeout=10).status_code == 500
    finally:
        code, err = stop(proc, signal.SIGINT)
        assert proc.stdout is not None
        rest = proc.stdout.read()
    assert code == 0, err
    assert served["logger"] == "dagserve.run" and served["url"].startswith("http://127.0.0.1:")
    assert served["message"].startswith("serving failing at ")
    only_json(rest)
    messages = [rec["message"] for rec in only_json(err)]
    assert "ready failing: 1/1 nodes running" in messages  # the progress display, as records
    assert any(str(m).startswith("admin token for dagserve status/scale/update in ") for m in messages)
    assert messages[-1] == "stopped."


@pytest.mark.ray
def test_with_json_logs_on_ray_every_line_is_a_json_object_too() -> None:
    """Ray's and Serve's own Python loggers write JSON too; Ray's workers keep to their log files."""
    proc = start("tests.ingress_graphs:FAILING", "--backend", "ray", "--log-format", "json")
    try:
        served = json.loads(wait_for(lines_of(proc), "{", timeout=180))
        assert httpx.post(served["url"], json=3, timeout=60).status_code == 500
    finally:
        code, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    records = only_json(err)
    assert any(rec["logger"].startswith("ray.serve") for rec in records), err  # e.g. "Started Serve"
    (failed,) = [rec for rec in records if "traceback" in rec]
    assert "line 61, in boom" in str(failed["traceback"])  # from the replica, in the serving process's log


@pytest.mark.http
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_node_error_logs_its_traceback_once_with_the_request_and_trace_ids(log_format: str) -> None:
    """Issue 30: the node's traceback (file and line of its code, dagserve's frames folded) is in
    the server's log once per failed request, never in the response."""
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    proc = start("tests.ingress_graphs:FAILING", "--backend", "local", "--log-format", log_format)
    try:
        if log_format == "json":
            base = json.loads(wait_for(lines_of(proc), "{"))["url"]
        else:
            base = URL.search(wait_for(lines_of(proc), "dagserve: serving failing at ")).group(0)  # type: ignore[union-attr]
        headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01", "x-request-id": "tb-1"}
        r = httpx.post(base, json=3, headers=headers, timeout=10)
    finally:
        code, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    assert r.status_code == 500 and r.json()["error"]["node"] == "boom"
    assert "Traceback" not in r.text and "ingress_graphs.py" not in r.text
    user_frame = f'File "{ROOT / "tests" / "ingress_graphs.py"}", line 61, in boom'
    assert err.count("line 61, in boom") == 1, err  # once per failed request
    assert "frame(s) of dagserve, Ray or the event loop hidden" in err
    assert str(ROOT / "dagserve") + os.sep not in err  # dagserve's own frames are folded
    if log_format == "json":
        records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        (failed,) = [rec for rec in records if "traceback" in rec]
        assert failed["level"] == "ERROR" and failed["node"] == "boom"
        assert failed["request_id"] == "tb-1" and failed["trace_id"] == trace
        assert failed["message"] == "request tb-1 failed with 500: Node 'boom' raised ValueError: boom at 3"
        assert user_frame in failed["traceback"] and failed["traceback"].endswith("ValueError: boom at 3\n")
    else:
        line = next(line for line in err.splitlines() if "failed with 500" in line)
        assert "ERROR" in line and "[tb-1]" in line
        assert "ValueError: boom at 3" in err.split(line, 1)[1]  # the traceback follows the line


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("examples.quickstart", "is not MODULE:ATTR"),
        ("no_such_module_xyz:graph", "cannot import module 'no_such_module_xyz'"),
        ("examples.quickstart:nope", "has no attribute 'nope'"),
        ("examples.quickstart:grph", "has no attribute 'grph'. Did you mean 'graph'? Graphs in it: graph."),
        ("tests.ingress_graphs:NOT_A_GRAPH", "is a int, not a dagserve.Graph or a list of Graphs"),
    ],
)
def test_bad_targets_are_usage_errors(target: str, message: str) -> None:
    result = CliRunner().invoke(main, ["run", target])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert result.output.startswith("Error: Invalid value for MODULE:ATTR")  # not click's Usage: block


def test_a_module_elsewhere_is_found_with_app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    project = tmp_path / "project"
    project.mkdir()
    (project / "far_graphs.py").write_text(
        "import dagserve\n\n@dagserve.node\ndef twice(x: int) -> int:\n    return 2 * x\n\n"
        "with dagserve.Input() as inp:\n    out = twice(inp)\nfar = dagserve.Graph(out, name='far')\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "far_graphs", raising=False)
    missing = CliRunner().invoke(main, ["config", "far_graphs:far"])
    out = " ".join(missing.output.split())
    assert missing.exit_code == 2 and not out.startswith("Usage:")
    assert "No module named 'far_graphs'" in out and f"from the current directory ({elsewhere})" in out
    assert "--app-dir DIR" in out
    found = CliRunner().invoke(main, ["config", "far_graphs:far", "--app-dir", str(project)])
    assert found.exit_code == 0, found.output
    assert "twice:" in found.output
    sys.modules.pop("far_graphs", None)


def test_address_needs_the_ray_backend() -> None:
    # Ray is the default backend, so --address alone is fine; with --backend local it is a mistake.
    result = CliRunner().invoke(main, ["run", "examples.quickstart:graph", "--backend", "local", "--address", "auto"])
    assert result.exit_code == 2
    assert "--address is a Ray cluster's address; use it with --backend ray" in result.output


def test_a_ray_without_token_auth_is_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("DAGSERVE_ALLOW_UNAUTHENTICATED_RAY", raising=False)
    result = CliRunner().invoke(main, ["run", "examples.quickstart:graph", "--backend", "ray"])
    assert result.exit_code == 1, result.output
    assert "dagserve starts Ray only with token authentication" in result.output

    class Started(Exception):
        pass

    def init(**kwargs: object) -> None:
        raise Started  # the flag reached the backend: it went on to start Ray (stubbed here)

    monkeypatch.setattr(ray, "init", init)
    result = CliRunner().invoke(main, ["run", "examples.quickstart:graph", "--allow-unauthenticated-ray"])
    assert isinstance(result.exception, Started), result.output
    result = CliRunner().invoke(
        main, ["run", "examples.quickstart:graph", "--backend", "local", "--allow-unauthenticated-ray"]
    )
    assert result.exit_code == 2 and "use it with --backend ray" in result.output


def test_the_progress_line_names_pending_replicas_and_why() -> None:
    from dagserve.cli.run import _count
    from dagserve.runtime.status import AppStatus, NodeStatus

    class Deployed:  # a backend whose deploy returned with a replica still waiting for room
        def status(self) -> AppStatus:
            full = NodeStatus("clean", "function", False, "RUNNING", 1, 1)
            short = NodeStatus("OnGpu", "model", False, "UPDATING", 5, 4, 1, "no Ray node has a free 0.25 GPU")
            return AppStatus("g", "ray", {"clean": full, "OnGpu": short})

    assert _count(Deployed()) == (  # type: ignore[arg-type]
        "1/2 nodes running; OnGpu 4 of 5 replicas, 1 pending (no Ray node has a free 0.25 GPU)"
    )


def test_a_taken_port_is_a_clean_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main, ["run", "tests.ingress_graphs:SLOW", "--port", str(port), "--log-level", "error"]
        )
    assert result.exit_code == 1, result.output
    assert f"could not start on 127.0.0.1:{port}" in result.output


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--backend",
        "--address",
        "--allow-unauthenticated-ray",
        "--token",
        "--admin-token",
        "--max-body-size",
        "--max-in-flight",
        "--body-timeout",
        "--header-timeout",
        "--shutdown-timeout",
        "--debug",
        "--log-format",
        "--otlp-endpoint",
    ):
        assert option in result.output
    assert "DAGSERVE_TOKEN" in result.output


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        ("10MiB", 10 * 1024**2),
        ("512KiB", 512 * 1024),
        ("1MB", 1_000_000),
        ("2 kb", 2000),
        ("1.5GiB", int(1.5 * 1024**3)),
        ("64k", 64_000),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="'ten' is not a size; write e.g. 10MiB"):
        parse_size("ten")
    result = CliRunner().invoke(main, ["run", "examples.quickstart:graph", "--max-body-size", "0"])
    assert result.exit_code == 2 and "must be more than 0 bytes" in result.output


# -- the admin token of a loopback server -----------------------------------------------------------


@pytest.mark.http
def test_a_loopback_server_without_an_admin_token_makes_one_that_status_reads(private_runtime_dir: Path) -> None:
    proc = start("tests.ingress_graphs:BOTH", "--backend", "local")
    try:
        line = wait_for(lines_of(proc), "dagserve: serving typed, echo at ")
        base = URL.search(line).group(0).rstrip("/")  # type: ignore[union-attr]
        port = int(base.rsplit(":", 1)[1])
        token_dir = private_runtime_dir / "dagserve"
        token_file = token_dir / f"admin-token-127.0.0.1-{port}"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_dir.stat().st_mode & 0o777 == 0o700
        token = token_file.read_text().strip()
        assert len(token) >= 32 and token_for_url(base) == token
        # No --token, no environment variable: the stored token is used.
        status = CliRunner().invoke(main, ["status", "--url", base, "--json"], terminal_width=120)
        assert status.exit_code == 0, status.output
        assert set(json.loads(status.output)["graphs"]) == {"typed", "echo"}
        scaled = CliRunner().invoke(main, ["scale", "echo", "echo", "--replicas", "2", "--url", base])
        assert scaled.exit_code == 0, scaled.output
        # An explicit token still wins over the stored one.
        wrong = CliRunner().invoke(main, ["status", "--url", base, "--token", "not-it"])
        assert wrong.exit_code == 1 and "rejected the admin token" in wrong.output
        from_env = CliRunner().invoke(main, ["status", "--url", base], env={ADMIN_TOKEN_ENV: "not-it"})
        assert from_env.exit_code == 1 and "rejected the admin token" in from_env.output
        # Another port: nothing answers there, and the message says so (not that a token is missing).
        other = CliRunner().invoke(main, ["status", "--url", f"http://127.0.0.1:{port + 1}"])
        assert other.exit_code == 1 and "Nothing answers at" in other.output
    finally:
        code, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    assert f"admin token for dagserve status/scale/update in {token_file}" in err
    assert not token_file.exists()  # removed at shutdown
    assert list(token_dir.iterdir()) == []


def test_the_stored_token_is_never_read_for_another_machine(private_runtime_dir: Path) -> None:
    from dagserve.http.admin import write_token_file

    path = write_token_file("127.0.0.1", 8123, "local-secret")
    assert token_for_url("http://127.0.0.1:8123") == "local-secret"
    assert token_for_url("http://localhost:8123/") == "local-secret"
    assert token_for_url("http://127.0.0.1:8124") is None
    assert token_for_url("http://10.0.0.5:8123") is None
    assert token_for_url("http://example.com:8123") is None
    path.chmod(0o644)  # readable by others: not trusted, and said so
    result = CliRunner().invoke(main, ["status", "--url", "http://127.0.0.1:8123"])
    assert result.exit_code == 1 and "is not a private file (mode 0600)" in result.output


def test_a_token_directory_others_can_read_is_refused_not_repaired(private_runtime_dir: Path) -> None:
    (private_runtime_dir / "dagserve").mkdir(mode=0o755)
    (private_runtime_dir / "dagserve").chmod(0o755)
    result = CliRunner().invoke(main, ["run", "tests.ingress_graphs:BOTH", "--backend", "local"])
    assert result.exit_code == 1
    assert "is not a private directory (mode 0700)" in result.output and "--admin-token" in result.output
    assert (private_runtime_dir / "dagserve").stat().st_mode & 0o777 == 0o755


@pytest.fixture
def nothing_deploys(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replaces deploying (and so serving) by a record of the attempt: these tests never bind."""
    attempts: list[str] = []

    def refuse(graphs: list[object], *args: object, **kwargs: object) -> list[object]:
        attempts.append("deploy")
        raise click.ClickException("deploying is replaced in this test")

    monkeypatch.setattr(dagserve.cli.run, "_deploy_all", refuse)
    return attempts


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_non_loopback_server_without_an_admin_token_serves_without_admin_routes(
    host: str, nothing_deploys: list[str], private_runtime_dir: Path
) -> None:
    result = CliRunner().invoke(main, ["run", "tests.ingress_graphs:BOTH", "--backend", "local", "--host", host])
    out = " ".join(result.output.split())
    assert f"serving on {host} without admin routes" in out
    assert "--admin-token" in out and ADMIN_TOKEN_ENV in out
    assert nothing_deploys == ["deploy"]  # it goes on (deploying is replaced here, so nothing binds)
    assert not (private_runtime_dir / "dagserve").exists()  # no token was made for another machine


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--admin-token", "chosen"], {}),
        ([], {ADMIN_TOKEN_ENV: "chosen"}),
        (["--no-admin"], {}),
    ],
)
def test_a_non_loopback_server_goes_on_with_a_token_or_without_admin_routes(
    args: list[str], env: dict[str, str], nothing_deploys: list[str]
) -> None:
    result = CliRunner().invoke(
        main, ["run", "tests.ingress_graphs:BOTH", "--backend", "local", "--host", "0.0.0.0", *args], env=env
    )
    assert nothing_deploys == ["deploy"], result.output
    assert "deploying is replaced in this test" in result.output


def test_no_admin_with_a_token_is_a_contradiction(nothing_deploys: list[str]) -> None:
    result = CliRunner().invoke(main, ["run", "tests.ingress_graphs:BOTH", "--no-admin", "--admin-token", "t"])
    assert result.exit_code == 2 and "drop one of them" in result.output
    assert nothing_deploys == []


def test_two_graphs_with_one_name_are_refused_before_anything_deploys(nothing_deploys: list[str]) -> None:
    result = CliRunner().invoke(main, ["run", "tests.ingress_graphs:SAME_NAME", "--backend", "local"])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "Several graphs are named 'typed'" in out and "Graph(..., name='...')" in out
    assert nothing_deploys == []


def test_stream_timeout_reaches_the_deployed_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    class Deployed(Exception):
        pass

    def deploy_all(
        graphs: object, backend: object, backend_options: object, deploy_options: dict[str, object], console: object,
        config: object = None, json_lines: bool = False,
    ) -> None:
        seen.update(deploy_options)
        raise Deployed

    monkeypatch.setattr(dagserve.cli.run, "_deploy_all", deploy_all)
    result = CliRunner().invoke(main, ["run", "examples.qa_stream:graph", "--backend", "local", "--stream-timeout", "30"])
    assert isinstance(result.exception, Deployed), result.output
    assert seen["stream_timeout_s"] == 30.0


@pytest.mark.http
def test_run_serves_the_openai_models_of_a_list_of_marked_graphs() -> None:
    proc = start("examples.qa_stream:openai_models", "--backend", "local", env={"DAGSERVE_TOKEN": "cli-token"})
    try:
        line = wait_for(lines_of(proc), "dagserve: serving qa_chat, qa_complete at ")
        base = URL.search(line).group(0)  # type: ignore[union-attr]
        ok = {"authorization": "Bearer cli-token"}
        assert [m["id"] for m in httpx.get(base + "v1/models", headers=ok, timeout=10).json()["data"]] == ["qa-stream"]
        body = {"model": "qa-stream", "prompt": "How do bees make honey?", "max_tokens": 3}
        assert httpx.post(base + "v1/completions", json=body, headers=ok, timeout=30).json()["choices"][0]["text"] == "Bees make honey "
        assert httpx.post(base + "v1/completions", json=body, timeout=10).json()["error"]["code"] == "invalid_api_key"
    finally:
        code, err = stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert f"OpenAI models qa-stream at {base}v1" in err
