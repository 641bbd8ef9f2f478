"""``dagserve run MODULE:ATTR``: a real server in a subprocess, and the command's argument handling."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from dagserve._cli import main
from dagserve._serve import parse_size
from tests.test_serve import lines_of, wait_for

ROOT = Path(__file__).resolve().parents[1]
URL = re.compile(r"http://127\.0\.0\.1:\d+/")


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


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("examples.quickstart", "is not MODULE:ATTR"),
        ("no_such_module_xyz:graph", "cannot import module 'no_such_module_xyz'"),
        ("examples.quickstart:nope", "has no attribute 'nope'"),
        ("tests.ingress_graphs:NOT_A_GRAPH", "is a int, not a dagserve.Graph or a list of Graphs"),
    ],
)
def test_bad_targets_are_usage_errors(target: str, message: str) -> None:
    result = CliRunner().invoke(main, ["run", target])
    assert result.exit_code == 2
    assert message in result.output


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
    from dagserve._serve import _count
    from dagserve._status import AppStatus, NodeStatus

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
