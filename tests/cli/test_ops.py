"""``dagserve status / scale / update`` against a real uvicorn server on 127.0.0.1 (real HTTP)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

import dagserve
from dagserve.cli.main import main
from dagserve.http.settings import ADMIN_TOKEN_ENV
from tests.background_server import BackgroundServer
from tests.http.test_admin import make_graph

pytestmark = pytest.mark.http

TOKEN = "ops-token"
GRAPH = "ops"


@dataclass
class Server:
    url: str
    app: dagserve.App


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    app = dagserve.deploy(make_graph(name=GRAPH), backend="local")
    try:
        with BackgroundServer(dagserve.asgi_app(app, admin_token=TOKEN, token="")) as url:
            for text in ("a b", "c d e"):
                r = httpx.post(f"{url}{GRAPH}", json={"text": text})
                assert r.status_code == 200, r.text
            yield Server(url.rstrip("/"), app)
    finally:
        app.shutdown()


def cli(*args: str, token: str | None = TOKEN, env: dict[str, str] | None = None) -> tuple[int, str]:
    env = {ADMIN_TOKEN_ENV: token or "", **(env or {})}
    result = CliRunner().invoke(main, list(args), env=env, terminal_width=120)
    return result.exit_code, result.output


def test_status_prints_a_table_per_graph(server: Server) -> None:
    code, out = cli("status", "--url", server.url)
    assert code == 0, out
    assert f"{GRAPH} (local, ready)" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip().split()[:1] in (["Classifier"], ["tokenize"], ["embed"])}
    assert set(lines) == {"tokenize", "Classifier", "embed"}
    assert lines["Classifier"][1] == "2/2/0"  # target/running/pending
    assert lines["embed"][2] == "4/10ms"  # batch: max size / wait
    assert lines["tokenize"][2] == "-"  # not batched
    assert lines["Classifier"][3:5] == ["2", "0"]  # requests, errors (no transport column: all inline)
    assert lines["Classifier"][5].endswith("ms") and lines["Classifier"][6].endswith("ms")  # p50, p99


def test_status_shows_each_nodes_transport_and_why_calls_go_through_serve() -> None:
    from rich.console import Console

    from dagserve.cli.ops import _notes, status_table

    def node(transport: str, counts: dict[str, int] | None = None, note: str | None = None) -> dict[str, object]:
        return {"target_replicas": 2, "running_replicas": 2, "transport": transport,
                "transport_replicas": counts or {}, "transport_note": note}

    status = {"backend": "ray", "ready": True, "nodes": {
        "pre": node("local socket", {"local socket": 1}),
        "Model": node("cross-node", {"cross-node": 2}),
        "both": node("mixed", {"local socket": 1, "cross-node": 1}),
        "post": node("serve", note="cross-node transport off: no token"),
    }}
    console = Console(width=120, record=True)
    console.print(status_table("g", status))
    rows = {line.split()[0]: line for line in console.export_text().splitlines() if line.strip()}
    assert "socket" in rows["pre"] and "cross-node" in rows["Model"] and "serve" in rows["post"]
    assert "socket 1+cross-node 1" in rows["both"]
    assert _notes(status) == ["post: cross-node transport off: no token"]


def test_status_says_a_graph_serves_while_replicas_wait() -> None:
    from rich.console import Console

    from dagserve.cli.ops import status_table

    node = {"target_replicas": 5, "running_replicas": 4, "pending_replicas": 1}
    status = {"backend": "ray", "ready": False, "serving": True, "nodes": {"OnGpu": node},
              "pending": {"OnGpu": {"target_replicas": 5, "running_replicas": 4, "pending_replicas": 1}}}
    console = Console(width=200, record=True)
    console.print(status_table("g", status))
    assert "g (ray, serving, 1 replica(s) pending)" in console.export_text()


def test_status_json_and_one_graph(server: Server) -> None:
    code, out = cli("status", GRAPH, "--json", "--url", server.url)
    assert code == 0, out
    data = json.loads(out)
    assert data["graphs"][GRAPH]["nodes"]["tokenize"]["requests"] >= 2


def test_status_prints_the_serve_settings_a_ray_graph_reports(capsys: pytest.CaptureFixture[str]) -> None:
    from dagserve.cli.ops import _print_status

    settings = {
        "caller": {"throughput_optimized": True, "router_retry_backoff_s": [0.005, 0.01]},
        "replica_env": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    }
    _print_status({"graphs": {"g": {"backend": "ray", "ready": True, "nodes": {}, "settings": settings}}})
    assert "Serve" not in capsys.readouterr().out  # internal settings: only under --verbose
    _print_status({"graphs": {"g": {"backend": "ray", "ready": True, "nodes": {}, "settings": settings}}}, verbose=True)
    out = capsys.readouterr().out
    assert "Serve in the serving process: throughput_optimized=True router_retry_backoff_s=[0.005, 0.01]" in out
    assert "carried to replicas: RAY_SERVE_ENABLE_DIRECT_INGRESS=0 RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in out
    _print_status({"graphs": {"g": {"backend": "local", "ready": True, "nodes": {}, "settings": {}}}}, verbose=True)
    assert "Serve" not in capsys.readouterr().out  # the local backend has none


def test_scale_changes_one_node_and_keeps_the_others(server: Server) -> None:
    before = server.app.status().nodes
    code, out = cli("scale", GRAPH, "Classifier", "--replicas", "3", "--url", server.url)
    assert code == 0, out
    assert f"Scaled {GRAPH}/Classifier" in out and "3/3/0" in out
    after = server.app.status().nodes
    assert after["Classifier"].running_replicas == 3
    assert after["tokenize"].replica_ids == before["tokenize"].replica_ids
    assert after["embed"].replica_ids == before["embed"].replica_ids
    code, out = cli("scale", GRAPH, "Classifier", "--min", "1", "--max", "4", "--wait", "30", "--url", server.url)
    assert code == 0, out
    assert "(1-4)" in out
    code, out = cli("scale", GRAPH, "Classifier", "-n", "2", "--url", server.url)
    assert code == 0 and "2/2/0" in out
    assert httpx.post(f"{server.url}/{GRAPH}", json={"text": "x y z"}).json() == {"n": 3, "e": 3}


def test_update_changes_batching(server: Server) -> None:
    code, out = cli("update", GRAPH, "embed", "--max-batch-size", "8", "--batch-wait-ms", "2", "--url", server.url)
    assert code == 0, out
    assert f"Updated {GRAPH}/embed" in out and "8/2ms" in out
    opts = server.app.plan.deployment("embed").options
    assert (opts.max_batch_size, opts.batch_wait_timeout_s) == (8, 0.002)


@pytest.mark.parametrize(
    ("args", "token", "code", "match"),
    [
        (("status",), "wrong", 1, "token"),
        (("status",), None, 1, "answers at"),
        (("scale", GRAPH, "Nope", "--replicas", "2"), TOKEN, 1, "has no node 'Nope'"),
        (("scale", "other", "Classifier", "--replicas", "2"), TOKEN, 1, "No graph named 'other'"),
        (("scale", GRAPH, "Classifier"), TOKEN, 2, "--replicas N, or --min/--max"),
        (("scale", GRAPH, "Classifier", "-n", "2", "--max", "3"), TOKEN, 2, "not both"),
        (("scale", GRAPH, "Classifier", "-n", "0"), TOKEN, 2, "0 is not in the range x>=1"),
        (("update", GRAPH, "embed"), TOKEN, 2, "Nothing to update"),
        (("status", "--url", "ftp://x"), TOKEN, 2, "not an http(s) URL"),
    ],
)
def test_errors_say_what_to_do(server: Server, args: tuple[str, ...], token: str | None, code: int, match: str) -> None:
    extra = () if "--url" in args else ("--url", server.url)
    got, out = cli(*args, *extra, token=token)
    assert got == code, out
    assert match in out.replace("\n", " ")


def test_a_server_without_a_token_has_no_admin_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    app = dagserve.deploy(make_graph(name="no_admin"), backend="local")
    try:
        with BackgroundServer(dagserve.asgi_app(app, token="")) as url:
            code, out = cli("status", "--url", url)
            r = httpx.get(f"{url}-/admin/status", headers={"authorization": f"Bearer {TOKEN}"})
    finally:
        app.shutdown()
    assert r.status_code == 404
    assert code == 1
    assert "has no admin routes" in out and ADMIN_TOKEN_ENV in out


def test_admin_auth_over_http(server: Server) -> None:
    url = f"{server.url}/-/admin/status"
    missing = httpx.get(url)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(url, headers={"authorization": "Basic abc"}).status_code == 401
    # The issue allows 401 or 403 for a wrong token; dagserve.http.admin's own check answers 403.
    assert httpx.get(url, headers={"authorization": "Bearer wrong"}).status_code in (401, 403)
    assert httpx.get(url, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_over_http_match_the_traffic(server: Server) -> None:
    def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        r = httpx.get(f"{server.url}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=")
        return _samples(r.text)

    def count(m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
        return m.get((name, frozenset({"graph": GRAPH, **labels}.items())), 0.0)

    before = scrape()
    codes = [httpx.post(f"{server.url}/{GRAPH}", json={"text": t}).status_code for t in ("a", "b c", "d e f", "g")]
    codes += [httpx.post(f"{server.url}/{GRAPH}", json={"text": "boom"}).status_code for _ in range(2)]
    codes.append(httpx.post(f"{server.url}/{GRAPH}", json={"words": "no text"}).status_code)
    assert codes == [200] * 4 + [500] * 2 + [400]
    after = scrape()
    for outcome, n in {"ok": 4, "node_error": 2, "client_error": 1, "timeout": 0, "overloaded": 0}.items():
        got = count(after, "dagserve_requests_total", outcome=outcome, protocol="http") - count(
            before, "dagserve_requests_total", outcome=outcome, protocol="http"
        )
        assert got == n, outcome
    calls = count(after, "dagserve_node_latency_seconds_count", node="Classifier") - count(
        before, "dagserve_node_latency_seconds_count", node="Classifier"
    )
    assert calls == 4
    errors = count(after, "dagserve_node_requests_total", node="tokenize", outcome="node_error") - count(
        before, "dagserve_node_requests_total", node="tokenize", outcome="node_error"
    )
    assert errors == 2
    assert count(after, "dagserve_replicas", node="tokenize", state="running") == 1
    assert count(after, "dagserve_batch_size_count", node="embed") >= 1
    assert count(after, "dagserve_requests_in_flight") == 0


def test_trace_header_on_request(server: Server) -> None:
    plain = httpx.post(f"{server.url}/{GRAPH}", json={"text": "a b"})
    assert "server-timing" not in plain.headers
    traced = httpx.post(f"{server.url}/{GRAPH}", json={"text": "a b"}, headers={"x-dagserve-trace": "1"})
    assert traced.status_code == 200
    entries = dict(e.split(";dur=") for e in traced.headers["server-timing"].split(", "))
    assert set(entries) == {"tokenize", "Classifier", "embed", "total"}
    assert all(float(v) >= 0 for v in entries.values())
    assert traced.headers["x-dagserve-request-id"] == traced.headers["x-request-id"]


@pytest.mark.parametrize("token", [TOKEN, None])
@pytest.mark.parametrize(
    "args", [("status",), ("scale", GRAPH, "Classifier", "-n", "2"), ("update", GRAPH, "embed", "--max-batch-size", "4")]
)
def test_nothing_listening_is_a_clear_error(args: tuple[str, ...], token: str | None, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    code, out = cli(*args, "--url", f"http://127.0.0.1:{port}", token=token, env={"XDG_RUNTIME_DIR": str(tmp_path)})
    out = out.replace("\n", " ")
    assert code == 1, out
    assert f"Nothing answers at http://127.0.0.1:{port}" in out and "--url" in out
    assert "token" not in out and not out.startswith("Usage:")


@pytest.mark.parametrize(("token", "match"), [(None, "has no admin token"), ("wrong", "rejected the admin token")])
def test_a_server_that_answers_without_the_right_token_is_told_apart(
    server: Server, token: str | None, match: str, tmp_path: Path
) -> None:
    code, out = cli("status", "--url", server.url, token=token, env={"XDG_RUNTIME_DIR": str(tmp_path)})
    out = out.replace("\n", " ")
    assert code == 1, out
    assert f"{server.url}" in out and "answers" in out and match in out and "Nothing answers" not in out
    assert not out.startswith("Usage:")


def test_admin_actions_are_logged_once_done_and_refusals_as_refusals(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="dagserve.admin"):
        code, _ = cli("scale", GRAPH, "Clasifier", "--replicas", "2", "--url", server.url)
        assert code == 1
        code, _ = cli("scale", GRAPH, "Classifier", "--replicas", "2", "--url", server.url)
        assert code == 0
        cli("status", "--url", server.url, token="wrong")
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "dagserve.admin"]
    assert not any("Clasifier" in m and "done" in m for _, m in records), records
    refused = [m for level, m in records if level == "WARNING"]
    assert any("Clasifier" in m and "refused with 404" in m for m in refused), records
    assert any("/-/admin/status refused with 403" in m for m in refused), records
    assert ("INFO", f"Admin scale of {GRAPH}/Classifier done: {{'num_replicas': 2}}") in records


def test_scale_and_update_print_json_on_request(server: Server) -> None:
    code, out = cli("scale", GRAPH, "Classifier", "-n", "2", "--json", "--url", server.url)
    assert code == 0, out
    assert json.loads(out)["node"]["target_replicas"] == 2
    code, out = cli("update", GRAPH, "embed", "--max-batch-size", "4", "--json", "--url", server.url)
    assert code == 0, out
    assert json.loads(out)["node"]["options"]["max_batch_size"] == 4


def test_piped_tables_print_whole_values(server: Server) -> None:
    """A pipe is not a terminal: no column is cut to fit 80 (or $COLUMNS) characters."""
    env = {**os.environ, ADMIN_TOKEN_ENV: TOKEN, "DAGSERVE_URL": server.url, "COLUMNS": "30"}
    done = subprocess.run(
        [sys.executable, "-m", "dagserve", "status"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout, done.stdout
    header = next(line for line in done.stdout.splitlines() if line.split()[:1] == ["node"])
    assert header.split() == ["node", "replicas", "batch", "requests", "errors", "p50", "p99"]
    assert "replicas: target/running/pending (autoscaling min-max)" in " ".join(done.stdout.split())


def test_the_installed_command_runs_in_a_shell(server: Server) -> None:
    env = {**os.environ, ADMIN_TOKEN_ENV: TOKEN, "DAGSERVE_URL": server.url, "COLUMNS": "120"}
    done = subprocess.run(
        [sys.executable, "-m", "dagserve", "status"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Classifier" in done.stdout and "tokenize" in done.stdout


def test_status_shows_the_models_each_replica_of_a_multiplexed_node_holds() -> None:
    from tests import multiplex_graphs as mg

    app = dagserve.deploy(mg.tenants(replicas=1), backend="local")
    try:
        with BackgroundServer(dagserve.asgi_app(app, admin_token=TOKEN, token="")) as url:
            for tenant in ("a", "b", "a", "c"):
                assert httpx.post(url, json={"x": 1, "tenant": tenant}).status_code == 200
            code, out = cli("status", "--url", url.rstrip("/"))
            assert code == 0, out
            code, raw = cli("status", "--json", "--url", url.rstrip("/"))
            replica = app.status().nodes["Tenants"].replica_ids[0]
    finally:
        app.shutdown()
    assert "Tenants: models (at most 2 per replica) 3 loaded in" in out
    assert f"1 evicted, hit ratio 0.25; {replica}: a, c" in out
    models = json.loads(raw)["graphs"]["tenants"]["nodes"]["Tenants"]["models"]
    assert models["replicas"] == {replica: ["a", "c"]} and models["hits"] == 1
