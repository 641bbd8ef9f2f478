"""``dagserve batch``: JSONL/CSV/Parquet in, one record per input out, errors kept, resume.

Runs on the local backend in-process through click's runner, plus one real subprocess that is
killed with SIGKILL half-way and then resumed. The Ray versions of the round trips and of resume
are in tests/runtime/test_mapping.py, which shares its Ray with them; they use this module's graph and checks.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from pydantic import BaseModel

import dagserve
from dagserve.cli.main import main
from dagserve.offline.files import recover

ROOT = Path(__file__).resolve().parents[2]
TARGET = "tests.cli.test_cli_batch:graph"


class Item(BaseModel):
    id: int
    text: str
    sleep: float = 0.0


@dagserve.node
async def measure(item: Item) -> str:
    if item.sleep:
        await asyncio.sleep(item.sleep)
    if item.text == "boom":
        raise RuntimeError("boom on purpose")
    return item.text


@dagserve.node(max_batch_size=8, batch_wait_timeout_s=0.002)
class Upper:
    async def __call__(self, texts: list[str]) -> list[str]:
        return [t.upper() for t in texts]


with dagserve.Input(schema=Item) as inp:
    graph = dagserve.Graph({"id": inp["id"], "upper": Upper()(measure(inp))}, name="cli_batch")

with dagserve.Input(schema=Item) as inp:
    # The same nodes under another name, for a command run next to a deployed `graph` on one Ray.
    ray_graph = dagserve.Graph({"id": inp["id"], "upper": Upper()(measure(inp))}, name="cli_batch_ray")


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def batch(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["batch", TARGET, *map(str, args)], catch_exceptions=False)


def good(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "text": f"t{i}"} for i in range(start, start + n)]


# ---------------------------------------------------------------------------------------------


def mixed_jsonl(path: Path) -> Path:
    """26 records: a bad JSON line (4), a schema error (5), a blank line (6), a node error (7)."""
    rows: list[Any] = [*good(3), "{not json", {"id": "abc", "text": "x"}, "", {"id": 5, "text": "boom"}, *good(20, 6)]
    return write_jsonl(path, rows)


def check_mixed_jsonl(records: list[dict[str, Any]]) -> None:
    assert [r["index"] for r in records] == list(range(26))  # one per record, blank line skipped
    ok = [r for r in records if r["ok"]]
    assert [r["output"] for r in ok] == [{"id": i, "upper": f"T{i}"} for i in [0, 1, 2, *range(6, 26)]]
    bad = {r["line"]: r["error"] for r in records if not r["ok"]}
    assert set(bad) == {4, 5, 7}  # physical line numbers in the input file
    assert bad[4]["type"] == "JSONDecodeError" and bad[4]["node"] is None
    assert bad[5]["type"] == "InputValidationError" and bad[5]["details"][0]["loc"] == ["id"]
    assert bad[7] == {
        "type": "NodeError",
        "node": "measure",
        "message": "Node 'measure' raised RuntimeError: boom on purpose",
        "cause": "RuntimeError",
    }


def mixed_csv(path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerow([0, "a"])
        w.writerow([1, "two\nlines"])  # a quoted field spanning lines 3-4
        w.writerow([2, "c", "extra"])  # line 5: more fields than the header
        w.writerow(["x", "d"])  # line 6: id is not an int
        w.writerow([4, "e"])
    return path


def check_mixed_csv(records: list[dict[str, Any]]) -> None:
    assert [r["line"] for r in records] == [2, 3, 5, 6, 7]
    assert records[1]["output"] == {"id": 1, "upper": "TWO\nLINES"}  # CSV strings validated into ints
    assert records[2]["error"] == {
        "type": "RequestError",
        "node": None,
        "message": "CSV row has 3 fields but the header has 2.",
    }
    assert records[3]["error"]["type"] == "InputValidationError"
    assert records[4]["output"] == {"id": 4, "upper": "E"}


def test_jsonl_round_trip_keeps_order_and_reports_every_failure(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = batch(mixed_jsonl(tmp_path / "in.jsonl"), "-o", out, "--concurrency", "8")
    assert result.exit_code == 1
    assert "3 of 26 failed" in result.output
    check_mixed_jsonl(read_records(out))
    # The summary: counts, throughput and each node's share of the time.
    for word in ("processed", "succeeded", "failed", "throughput", "payloads/s", "measure", "Upper", "%"):
        assert word in result.output


def test_json_prints_the_summary_as_one_object(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        main, ["batch", TARGET, str(write_jsonl(tmp_path / "in.jsonl", good(5))), "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["processed"], summary["succeeded"], summary["failed"]) == (5, 5, 0)
    assert summary["output"] == str(out) and set(summary["node_shares"]) == {"measure", "Upper"}


def test_errors_file_takes_the_error_records(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [*good(4), {"id": 4, "text": "boom"}, *good(2, 5)])
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    result = batch(src, "-o", out, "--errors", errors)
    assert result.exit_code == 1 and "1 of 7 failed" in result.output
    assert [r["index"] for r in read_records(out)] == [0, 1, 2, 3, 5, 6]
    (err,) = read_records(errors)
    assert err["line"] == 5 and err["error"]["node"] == "measure"


def test_all_good_exits_zero_with_a_progress_bar(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", good(300))
    out = tmp_path / "out.jsonl"
    result = batch(src, "-o", out, "--progress")
    assert result.exit_code == 0, result.output
    assert "failed" in result.output and "of 300 failed" not in result.output
    assert "300/300" in result.output and "/s" in result.output and "ETA" in result.output
    assert [r["output"]["id"] for r in read_records(out)] == list(range(300))


def test_csv_rows_are_payloads_with_their_line_numbers(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = batch(mixed_csv(tmp_path / "in.csv"), "-o", out)
    assert result.exit_code == 1 and "2 of 5 failed" in result.output
    check_mixed_csv(read_records(out))


def test_parquet_round_trip(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(good(50)), src, row_group_size=16)
    out = tmp_path / "out.jsonl"
    assert batch(src, "-o", out).exit_code == 0
    records = read_records(out)
    assert [r["line"] for r in records] == list(range(1, 51))
    assert records[-1]["output"] == {"id": 49, "upper": "T49"}


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in.parquet"
    src.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = batch(src, "-o", tmp_path / "out.jsonl")
    assert result.exit_code == 1
    assert "needs pyarrow; install it with `pip install 'dagserve[parquet]'`" in result.output


def test_resume_skips_what_was_written_and_redoes_a_cut_line(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", good(40))
    out = tmp_path / "out.jsonl"
    # A previous run wrote 10 records and died in the middle of the 11th.
    write_jsonl(tmp_path / "first.jsonl", good(10))
    assert batch(tmp_path / "first.jsonl", "-o", out).exit_code == 0
    with out.open("a") as f:
        f.write('{"index": 10, "line": 11, "ok": tr')

    result = batch(src, "-o", out, "--resume")
    assert result.exit_code == 0, result.output
    assert re.search(r"resumed after\s+10 records \(0 failed\)", result.output)
    assert re.search(r"processed\s+30\n", result.output)
    assert [r["output"]["id"] for r in read_records(out)] == list(range(40))


def test_resume_after_sigkill_writes_exactly_one_record_per_input(tmp_path: Path) -> None:
    n = 600
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"t{i}", "sleep": 0.02} for i in range(n)])
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "dagserve", "batch", TARGET, str(src), "-o", str(out), "--concurrency", "8"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.stat().st_size > 0:
                break  # the first flush happened: the run is under way
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    written = out.read_bytes().count(b"\n")
    assert 0 < written < n  # killed half-way

    result = batch(src, "-o", out, "--resume", "--concurrency", "32")
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert [r["index"] for r in records] == list(range(n))
    assert [r["output"]["id"] for r in records] == list(range(n))
    # It went on from where the killed run stopped, not from the start.
    match = re.search(r"resumed after\s+(\d+) records", result.output)
    assert match is not None and 0 < int(match[1]) <= written
    assert re.search(rf"processed\s+{n - int(match[1])}\n", result.output)


def test_existing_output_needs_resume_or_overwrite(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", good(3))
    out = tmp_path / "out.jsonl"
    out.write_text("something\n")
    result = batch(src, "-o", out)
    assert result.exit_code == 2 and not result.output.startswith("Usage:")
    assert "already exists; pass --resume to continue that run or --overwrite" in result.output
    result = batch(src, "-o", out, "--resume")
    assert result.exit_code == 1 and "Line 1 of" in result.output and "is not a dagserve batch record" in result.output
    assert batch(src, "-o", out, "--overwrite").exit_code == 0
    assert len(read_records(out)) == 3


def test_resume_against_a_shorter_input_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert batch(write_jsonl(tmp_path / "a.jsonl", good(5)), "-o", out).exit_code == 0
    result = batch(write_jsonl(tmp_path / "b.jsonl", good(3)), "-o", out, "--resume")
    assert result.exit_code == 1 and "already holds 5 records but" in result.output and "has only 3" in result.output


def _record(i: int, ok: bool = True) -> str:
    """A record as a run writes it, without its newline."""
    body = {"output": {"id": i, "upper": f"T{i}"}} if ok else {"error": {"type": "NodeError", "node": "measure"}}
    return json.dumps({"index": i, "line": i + 1, "ok": ok, **body})


@pytest.mark.parametrize("tail", ['{"index": 3, "line": 4, "ok": tr', "{", '{"index": 3, "line": 4, "ok": true, "output": {"id"'])
def test_resume_drops_only_a_torn_last_line(tmp_path: Path, tail: str) -> None:
    out = tmp_path / "out.jsonl"
    kept = "".join(_record(i, ok=i != 1) + "\n" for i in range(3))
    out.write_text(kept + tail)
    assert recover([out]) == (3, 1)
    assert out.read_text() == kept  # everything before the torn line, byte for byte

    result = batch(write_jsonl(tmp_path / "in.jsonl", good(6)), "-o", out, "--resume")
    assert result.exit_code == 1, result.output  # record 1 is an error record from the first run
    assert re.search(r"resumed after\s+3 records \(1 failed\)", result.output)
    assert re.search(r"processed\s+3\n", result.output)
    records = read_records(out)
    assert [r["index"] for r in records] == list(range(6))
    assert out.read_text().startswith(kept)


@pytest.mark.parametrize("n", [1, 4])
def test_resume_keeps_a_whole_last_record_that_lacks_only_its_newline(tmp_path: Path, n: int) -> None:
    out = tmp_path / "out.jsonl"
    written = "\n".join(_record(i) for i in range(n))  # the last record's newline never made it
    out.write_text(written)
    assert recover([out]) == (n, 0)
    assert out.read_text() == written + "\n"

    result = batch(write_jsonl(tmp_path / "in.jsonl", good(6)), "-o", out, "--resume")
    assert result.exit_code == 0, result.output
    assert re.search(rf"resumed after\s+{n} records \(0 failed\)", result.output)
    assert re.search(rf"processed\s+{6 - n}\n", result.output)  # the kept record is not redone
    records = read_records(out)
    assert [r["index"] for r in records] == list(range(6))
    assert [r["output"]["id"] for r in records] == list(range(6))


def test_usage_errors(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", good(1))
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(main, ["batch", "tests.cli.test_cli_batch:Item", str(src), "-o", str(out)])
    assert r.exit_code == 2 and "is a ModelMetaclass, not a dagserve.Graph" in r.output
    assert r.output.startswith("Error: Invalid value for MODULE:ATTR")  # the input is wrong, not the usage
    r = batch(src, "-o", out, "--address", "127.0.0.1:1")
    assert r.exit_code == 2 and "--address is for --backend ray" in r.output
    txt = tmp_path / "in.txt"
    txt.write_text("{}\n")
    r = batch(txt, "-o", out)
    assert r.exit_code == 2 and "Cannot tell the format" in r.output and "--format jsonl|csv|parquet" in r.output
    assert not r.output.startswith("Usage:")
    assert batch(txt, "-o", out, "--format", "jsonl").exit_code == 1  # {} lacks id and text


def test_the_docs_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The input and the exact output shown in docs/batch.md.
    reviews = [
        '{"text": "What a GREAT film"}',
        '{"text": "Boring and too long", "lang": "en"}',
        '{"text": "Quel film", "lang": "fr"}',
        '{"txt": "typo in the field name"}',
        '{"text": "unterminated',
    ]
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "reviews.jsonl", reviews)
    args = ["batch", "examples.quickstart:graph", "reviews.jsonl", "-o", "scores.jsonl"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 1 and "2 of 5 failed; see the error records in 'scores.jsonl'." in result.output
    docs = (ROOT / "docs" / "batch.md").read_text()
    shown = docs.split("these exact lines):\n\n```json\n", 1)[1].split("```", 1)[0]
    assert (tmp_path / "scores.jsonl").read_text() == shown

