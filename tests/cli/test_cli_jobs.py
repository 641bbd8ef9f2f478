"""Jobs through ``dagserve run`` (real subprocesses on 127.0.0.1): a server SIGKILLed while jobs
run loses none of them on SQLite, or on Redis with a second server; ``dagserve jobs`` against a
running server; ``dagserve run``'s ``--jobs-*`` options."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from dagserve.cli.main import main
from benchmarks.dagserve_run import DagserveRun
from benchmarks.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.http


def Server(port: int, *args: str, env: dict[str, str]) -> DagserveRun:  # noqa: N802 - reads as the class it makes
    """``dagserve run tests.job_graphs:work --backend local`` on ``port``, its output in the test's directory."""
    out = Path(env["DAGSERVE_TEST_RUN_LOG"]).with_name(f"server-{port}.log")
    return DagserveRun("tests.job_graphs:work", port, *args, out=out, env=env)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The servers' state directory (default jobs file) and run log are the test's own."""
    return {"XDG_STATE_HOME": str(tmp_path / "state"), "DAGSERVE_TEST_RUN_LOG": str(tmp_path / "runs.log")}


def records(url: str, ids: list[str]) -> list[dict[str, Any]]:
    with httpx.Client(base_url=url, timeout=30) as client:
        return [client.get(f"/-/jobs/{job_id}").json() for job_id in ids]


def wait_until(what: str, check: Any, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.TransportError):
            value = check()
            if value:
                return value
        assert time.monotonic() < deadline, f"{what} within {timeout_s:g} s"
        time.sleep(0.1)


def all_succeeded(url: str, ids: list[str]) -> list[dict[str, Any]] | None:
    rs = records(url, ids)
    return rs if all(r["status"] == "succeeded" for r in rs) else None


def runs(env: dict[str, str]) -> Counter[str]:
    path = Path(env["DAGSERVE_TEST_RUN_LOG"])
    return Counter(path.read_text().split()) if path.exists() else Counter()


def submit(url: str, n: int, sleep: float) -> list[str]:
    with httpx.Client(base_url=url, timeout=30) as client:
        answers = [client.post("/jobs", json={"n": i, "sleep": sleep}) for i in range(n)]
    assert {a.status_code for a in answers} == {202}
    return [a.json()["id"] for a in answers]


def test_sigkill_on_sqlite_loses_no_job_and_restart_reruns_the_running_ones(tmp_path: Path, env: dict[str, str]) -> None:
    db, port = tmp_path / "jobs.sqlite3", free_port()
    server = Server(port, "--jobs-db", str(db), "--jobs-concurrency", "3", env=env)
    try:
        ids = submit(server.url, 12, 0.4)
        wait_until("some jobs ran", lambda: sum(runs(env).values()) >= 4)
        running = [r["id"] for r in records(server.url, ids) if r["status"] == "running"]
        server.kill()  # mid-flight: some succeeded, some running, the rest queued
        assert running
        server = Server(port, "--jobs-db", str(db), "--jobs-concurrency", "3", env=env)
        done = wait_until("every job finished", lambda: all_succeeded(server.url, ids))
        assert [r["result"] for r in done] == [{"n": 2 * i} for i in range(12)]
        counted = runs(env)
        assert set(counted) == set(ids)  # none lost
        for record in done:
            assert record["attempts"] == counted[record["id"]]  # re-runs are counted as attempts
        # The jobs running at the kill ran again (at least once semantics); no job ran more than twice.
        assert any(counted[job_id] == 2 for job_id in running) and max(counted.values()) <= 2
    finally:
        log = server.stop()
    assert "queued again" in log or "left running" in log


def test_dagserve_jobs_list_show_cancel_against_a_server(tmp_path: Path, env: dict[str, str]) -> None:
    port = free_port()
    server = Server(port, env=env)  # no --jobs-db: the default file, per host:port, under XDG_STATE_HOME
    try:
        assert (tmp_path / "state" / "dagserve" / f"jobs-127.0.0.1-{port}.sqlite3").exists()
        done, slow = submit(server.url, 1, 0)[0], submit(server.url, 1, 60)[0]
        wait_until("the first job finished", lambda: records(server.url, [done])[0]["status"] == "succeeded")
        runner = CliRunner()
        listed = runner.invoke(main, ["jobs", "list", "--url", server.url, "--json"])
        assert listed.exit_code == 0, listed.output
        assert [j["id"] for j in json.loads(listed.output)["jobs"]] == [done, slow]
        table = runner.invoke(main, ["jobs", "list", "--url", server.url, "--status", "succeeded"])
        assert table.exit_code == 0 and done in table.output and slow not in table.output
        shown = runner.invoke(main, ["jobs", "show", done, "--url", server.url])
        assert shown.exit_code == 0 and json.loads(shown.output)["result"] == {"n": 0}
        cancelled = runner.invoke(main, ["jobs", "cancel", slow, "--url", server.url])
        assert cancelled.exit_code == 0 and f"Job {slow} is cancelled." in cancelled.output
        again = runner.invoke(main, ["jobs", "cancel", slow, "--url", server.url])
        assert again.exit_code == 1 and "already cancelled" in again.output
        missing = runner.invoke(main, ["jobs", "show", "nope", "--url", server.url])
        assert missing.exit_code == 1 and "There is no job 'nope'" in missing.output
    finally:
        server.stop()
    gone = CliRunner().invoke(main, ["jobs", "list", "--url", server.url])
    assert gone.exit_code == 1 and "Nothing answers at" in gone.output


def test_dagserve_jobs_sends_the_graph_token(env: dict[str, str]) -> None:
    port = free_port()
    server = Server(port, "--token", "tok", "--port", str(port), env=env)
    try:
        refused = CliRunner().invoke(main, ["jobs", "list", "--url", server.url])
        assert refused.exit_code == 1 and "--token" in refused.output
        ok = CliRunner().invoke(main, ["jobs", "list", "--url", server.url, "--token", "tok"])
        assert ok.exit_code == 0 and "No jobs." in ok.output
    finally:
        server.stop()


def test_redis_two_servers_one_killed_the_other_takes_its_jobs(tmp_path: Path, env: dict[str, str]) -> None:
    with RedisServer(tmp_path) as redis_url:
        args = ("--jobs-store", redis_url, "--jobs-concurrency", "2", "--jobs-lease", "1.5")
        first, second = Server(free_port(), *args, env=env), Server(free_port(), *args, env=env)
        try:
            ids = submit(first.url, 10, 0.5)
            mine = wait_until(
                "the first server ran jobs",
                lambda: [r["id"] for r in records(first.url, ids) if r["status"] == "running"] if runs(env) else None,
            )
            first.kill()
            done = wait_until("the second server finished every job", lambda: all_succeeded(second.url, ids))
            assert [r["result"] for r in done] == [{"n": 2 * i} for i in range(10)]
            counted = runs(env)
            assert set(counted) == set(ids)
            assert any(counted[job_id] == 2 for job_id in mine)  # the first server's runs were taken over
            for record in done:
                assert record["attempts"] == counted[record["id"]]
        finally:
            first.stop()
            second.stop()


def test_jobs_options_are_checked() -> None:
    runner = CliRunner()
    both = runner.invoke(main, ["run", "tests.job_graphs:work", "--jobs-db", "x", "--jobs-store", "redis://h:1/0"])
    assert both.exit_code == 2 and "not both" in both.output
    bad = runner.invoke(main, ["run", "tests.job_graphs:work", "--jobs-store", "kafka://h"])
    assert bad.exit_code == 2 and "redis://" in bad.output
