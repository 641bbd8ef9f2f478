"""``dagserve run --config FILE`` and ``dagserve config MODULE:ATTR``: precedence, errors, one real server."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

import dagserve.cli.run
from dagserve.cli.main import main
from dagserve.http.settings import ADMIN_TOKEN_ENV, TOKEN_ENV
from tests.cli.test_cli_run import URL, start, stop
from tests.http.test_serve import lines_of, wait_for

CONFIG = """\
graphs:
  reviews:
    nodes:
      Sentiment:
        num_replicas: 3
      Toxicity:
        max_batch_size: 4
server:
  max_body_size: 1KiB
  port: 8123
  max_in_flight: 7
"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))  # admin token files of servers started here
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = tmp_path / "dagserve.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replaces deploying and serving with a record of the settings they would get."""
    calls: list[dict[str, Any]] = []

    def record(graphs: list[Any], server: Any, **options: Any) -> None:
        calls.append({"graphs": [g.name for g in graphs], "server": server, **options})

    monkeypatch.setattr(dagserve.cli.run, "_run", record)
    return calls


def test_code_then_file_then_flags(config_file: Path, captured: list[dict[str, Any]]) -> None:
    args = ["run", "examples.quickstart:graph", "--config", str(config_file), "--port", "9000", "--no-admin"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (run,) = captured
    server = run["server"]  # the one ServerOptions value the flags, the file and the defaults make
    assert server.port == 9000  # the flag beats the file
    assert server.ingress.max_body_bytes == 1024 and server.ingress.max_in_flight == 7  # the file beats the defaults
    assert server.header_timeout_s == 10.0  # neither: the default
    sentiment = run["config"].graphs["reviews"].nodes["Sentiment"]
    assert sentiment == {"num_replicas": 3}


def test_a_bad_file_is_a_usage_error_before_anything_deploys(
    config_file: Path, tmp_path: Path, captured: list[dict[str, Any]]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("Sentiment:", "Sentimnt:"))
    result = CliRunner().invoke(main, ["run", "examples.quickstart:graph", "--config", str(bad)])
    assert result.exit_code == 2
    assert "has no node 'Sentimnt'. Did you mean 'Sentiment'?" in " ".join(result.output.split())
    bad.write_text("server:\n  max_bdy_size: 1KiB\n")
    result = CliRunner().invoke(main, ["run", "examples.quickstart:graph", "--config", str(bad)])
    assert result.exit_code == 2 and "Did you mean 'max_body_size'?" in " ".join(result.output.split())
    assert captured == []


def test_config_prints_the_configuration_in_force_as_a_file_it_reads_back(config_file: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["config", "examples.quickstart:graph", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    nodes = printed["graphs"]["reviews"]["nodes"]
    assert list(nodes) == ["clean", "Sentiment", "Toxicity", "respond", "not_supported"]
    assert nodes["Sentiment"]["num_replicas"] == 3  # the file's
    assert nodes["Toxicity"]["batch_wait_timeout_s"] == 0.005  # the code's
    assert printed["server"]["max_body_size"] == "1KiB" and printed["server"]["host"] == "127.0.0.1"
    again = tmp_path / "again.yaml"
    again.write_text(result.output)
    second = CliRunner().invoke(main, ["config", "examples.quickstart:graph", "--config", str(again)])
    assert yaml.safe_load(second.output) == printed


@pytest.mark.http
def test_config_names_the_source_of_every_setting(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagserve.runtime.tracing import OTLP_ENDPOINT_ENV

    monkeypatch.setenv(OTLP_ENDPOINT_ENV, "http://127.0.0.1:4318")
    args = ["config", "examples.quickstart:graph", "--config", str(config_file), "--port", "9000", "--log-format", "json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = {line.strip().split(":")[0]: line.strip() for line in result.output.splitlines() if "#" in line[1:]}
    assert lines["port"] == "port: 9000  # flag"  # the flag beats the file's 8123
    assert lines["max_in_flight"] == "max_in_flight: 7  # file"
    assert lines["otlp_endpoint"] == "otlp_endpoint: 'http://127.0.0.1:4318'  # environment"
    # Settings the flags leave unset are printed with what unset means.
    assert lines["request_timeout"] == "request_timeout: 60.0  # default"
    assert lines["stream_timeout"] == "stream_timeout: 600.0  # default"
    assert lines["ready_timeout"] == "ready_timeout: 120.0  # default"
    nodes = result.output.split("server:")[0]
    assert "num_replicas: 3  # file" in nodes and "batch_wait_timeout_s: 0.005  # code" in nodes and "max_batch_size: 4  # file" in nodes and "retries: 0  # default" in nodes
    assert yaml.safe_load(result.output)["server"]["port"] == 9000


@pytest.mark.http
def test_run_serves_with_the_files_settings(config_file: Path) -> None:
    proc = start("examples.quickstart:graph", "--backend", "local", "--config", str(config_file))
    try:
        line = wait_for(lines_of(proc), "dagserve: serving reviews at ")
        url = URL.search(line).group(0)  # type: ignore[union-attr]
        ok = httpx.post(url, json={"text": "What a GREAT film", "lang": "en"}, timeout=10)
        assert ok.status_code == 200 and ok.json()["label"] == "positive"
        big = httpx.post(url, json={"text": "x" * 2000, "lang": "en"}, timeout=10)
        assert big.status_code == 413  # max_body_size: 1KiB from the file
        status = CliRunner().invoke(main, ["status", "--url", url.rstrip("/"), "--json"])
        assert status.exit_code == 0, status.output
        nodes = json.loads(status.output)["graphs"]["reviews"]["nodes"]
        assert nodes["Sentiment"]["running_replicas"] == 3  # 2 in code, 3 in the file
    finally:
        code, err = stop(proc, signal.SIGINT)
    assert code == 0, err


def test_the_new_commands_are_listed() -> None:
    out = CliRunner().invoke(main, ["--help"]).output
    assert "build" in out and "config" in out
    assert "--config FILE.yaml" in CliRunner().invoke(main, ["run", "--help"]).output


def test_the_files_tracing_and_log_settings_apply_under_the_environment_and_flags(
    config_file: Path, captured: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagserve.runtime.tracing import OTLP_ENDPOINT_ENV

    # `dagserve run` sets OTLP_ENDPOINT_ENV in this process. setenv first records whether each
    # variable was there, so that the end of the test restores that (delenv of a missing variable
    # records nothing: the endpoint set here outlived the test, and every server the suite started
    # later in a subprocess spent seconds at exit exporting its spans to it).
    for name in (OTLP_ENDPOINT_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    config_file.write_text(
        CONFIG + "  log_format: json\n  stream_timeout: 42\n  otlp_endpoint: http://127.0.0.1:4318\n"
    )
    args = ["run", "examples.quickstart:graph", "--config", str(config_file), "--no-admin"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert captured[-1]["server"].log_format == "json" and captured[-1]["stream_timeout"] == 42
    import os

    assert os.environ[OTLP_ENDPOINT_ENV] == "http://127.0.0.1:4318"  # where the replicas read it at deploy
    monkeypatch.setenv(OTLP_ENDPOINT_ENV, "http://127.0.0.1:4000")  # the environment beats the file
    assert CliRunner().invoke(main, args + ["--log-format", "text"]).exit_code == 0
    assert captured[-1]["server"].log_format == "text"  # the flag beats the file
    assert os.environ[OTLP_ENDPOINT_ENV] == "http://127.0.0.1:4000"


def test_the_files_grpc_port_reaches_the_server_and_the_flag_beats_it(
    config_file: Path, captured: list[dict[str, Any]]
) -> None:
    config_file.write_text(CONFIG + "  grpc_port: 50071\n")
    args = ["run", "examples.quickstart:graph", "--config", str(config_file), "--no-admin"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert captured[-1]["server"].grpc_port == 50071
    assert CliRunner().invoke(main, [*args, "--grpc-port", "50072"]).exit_code == 0
    assert captured[-1]["server"].grpc_port == 50072
    config_file.write_text(CONFIG + "  grpc_port: 70000\n")
    bad = CliRunner().invoke(main, args)
    assert bad.exit_code != 0 and "grpc_port" in bad.output
