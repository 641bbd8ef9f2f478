"""Files through a graph (offline/files.py): recovering a run's output files, the summary of a
run, and the door its requests come in by. The ``dagserve batch`` command's own tests, which
share the graph and input helpers used here, are in tests/cli/test_cli_batch.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dagserve
from dagserve.offline.files import BatchError, recover, run_batch
from tests.cli.test_cli_batch import _record, good, graph, write_jsonl


def test_recover_cuts_back_to_the_first_gap_between_two_files(tmp_path: Path) -> None:
    def rec(i: int, ok: bool) -> str:
        return json.dumps({"index": i, "line": i + 1, "ok": ok}) + "\n"

    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    # Record 2 (an error) never reached its file, though 3 and 4 reached theirs.
    out.write_text(rec(0, True) + rec(1, True) + rec(3, True) + rec(4, True))
    errors.write_text("")
    assert recover([out, errors]) == (2, 0)
    assert out.read_text() == rec(0, True) + rec(1, True)
    errors.write_text(rec(2, False))
    assert recover([out, errors]) == (3, 1)


def test_recover_keeps_an_unterminated_last_record_of_the_errors_file(tmp_path: Path) -> None:
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    out.write_text(_record(0) + "\n" + _record(2) + "\n")
    errors.write_text(_record(1, ok=False))
    assert recover([out, errors]) == (3, 1)
    assert errors.read_text() == _record(1, ok=False) + "\n"
    assert out.read_text() == _record(0) + "\n" + _record(2) + "\n"


def test_run_batch_summary_counts_and_node_shares(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [*good(30), {"id": 30, "text": "boom"}])
    with dagserve.deploy(graph, backend="local") as app:
        s = run_batch(app, src, tmp_path / "out.jsonl", concurrency=16)
        with pytest.raises(BatchError, match=r"already exists; pass --resume"):
            run_batch(app, src, tmp_path / "out.jsonl")
    assert (s.total, s.processed, s.succeeded, s.failed, s.total_failed) == (31, 31, 30, 1, 1)
    assert s.throughput > 0 and not s.interrupted
    shares = s.node_shares()
    assert set(shares) == {"measure", "Upper"} and abs(sum(shares.values()) - 1) < 1e-9


def test_every_row_is_a_request_through_the_batch_door(tmp_path: Path) -> None:
    doors: list[str] = []
    src = write_jsonl(tmp_path / "in.jsonl", good(5))
    with dagserve.deploy(graph, backend="local") as app:
        app.observers.append(lambda _app, ctx, _error, _seconds: doors.append(ctx.protocol))
        run_batch(app, src, tmp_path / "out.jsonl", concurrency=4)
    assert doors == ["batch"] * 5
