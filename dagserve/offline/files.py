"""``dagserve batch``: files of payloads through a deployed graph.

JSON Lines / CSV / Parquet in, one JSON line per input out (in input order), error records
instead of lost rows, ``--resume`` after a killed run, a progress bar and a summary. Built on
:mod:`dagserve.runtime.mapping` (``App.map_results``). The ``dagserve batch`` command that drives
it is in :mod:`dagserve.cli.batch`.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagserve._errors import DagserveError, HTTPError, InputValidationError, NodeError, RequestError
from dagserve.runtime.executor import RequestContext
from dagserve.runtime.mapping import MapResult, _check_concurrency, map_results

if TYPE_CHECKING:
    from dagserve.app import App

__all__ = ["BatchError", "BatchSummary", "Row", "recover", "run_batch"]

#: Output files are flushed at least this often, so a killed run loses at most this much work.
_FLUSH_EVERY_S = 0.5
#: Input formats by file suffix.
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


# --------------------------------------------------------------------------------------------
# Reading input files
# --------------------------------------------------------------------------------------------


class BatchError(DagserveError):
    """A batch run cannot start or continue: unreadable input, an output that cannot be resumed."""


@dataclass(slots=True)
class Row:
    """One input record: its ordinal ``index``, 1-based ``line`` in the file, and the payload or
    the error that made it unreadable."""

    index: int
    line: int
    payload: Any = None
    error: Exception | None = None


def detect_format(path: Path, fmt: str | None) -> str:
    """``jsonl``, ``csv`` or ``parquet``: ``fmt`` if given, else from the file's suffix."""
    if fmt is not None:
        return fmt
    found = _FORMATS.get(path.suffix.lower())
    if found is None:
        raise BatchError(
            f"Cannot tell the format of {str(path)!r} from its suffix {path.suffix!r}; name it .jsonl, .csv or "
            ".parquet, or pass --format jsonl|csv|parquet."
        )
    return found


def count_rows(path: Path, fmt: str) -> int:
    """How many records ``read_rows`` will yield (for the progress bar and resume checks)."""
    if fmt == "jsonl":
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
            return max(0, sum(1 for r in csv.reader(f) if r) - 1)  # DictReader skips blank rows too
    return int(_parquet(path).metadata.num_rows)


def read_rows(path: Path, fmt: str, *, skip: int = 0) -> Iterator[Row]:
    """The records of ``path`` from ordinal ``skip`` on; unreadable ones carry their error."""
    if fmt == "jsonl":
        return _read_jsonl(path, skip)
    if fmt == "csv":
        return _read_csv(path, skip)
    if fmt == "parquet":
        return _read_parquet(path, skip)
    raise BatchError(f"Unknown input format {fmt!r}; use jsonl, csv or parquet.")


def _read_jsonl(path: Path, skip: int) -> Iterator[Row]:
    index = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue  # blank lines are not records
            if index >= skip:
                try:
                    yield Row(index, line_no, json.loads(raw.rstrip(b"\r\n")))
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                    yield Row(index, line_no, error=exc)
            index += 1


def _read_csv(path: Path, skip: int) -> Iterator[Row]:
    # utf-8-sig: a spreadsheet's byte-order mark would otherwise stick to the first column's name.
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f, restkey="\0rest")
        if reader.fieldnames is None:
            return
        width = len(reader.fieldnames)
        index = 0
        start = reader.line_num + 1
        for row in reader:
            if index >= skip:
                if "\0rest" in row or None in row.values():
                    extra = row.get("\0rest")
                    n = width + len(extra) if extra else sum(v is not None for v in row.values())
                    yield Row(index, start, error=RequestError(f"CSV row has {n} fields but the header has {width}."))
                else:
                    yield Row(index, start, row)
            index += 1
            start = reader.line_num + 1


def _parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BatchError(
            f"Reading Parquet ({str(path)!r}) needs pyarrow; install it with `pip install 'dagserve[parquet]'`."
        ) from None
    return pq.ParquetFile(path)


def _read_parquet(path: Path, skip: int) -> Iterator[Row]:
    pf = _parquet(path)
    index = 0
    for batch in pf.iter_batches(batch_size=1024):
        if index + batch.num_rows <= skip:
            index += batch.num_rows
            continue
        for payload in batch.to_pylist():
            if index >= skip:
                yield Row(index, index + 1, payload)
            index += 1


# --------------------------------------------------------------------------------------------
# Writing output records, and finding where a killed run stopped
# --------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):  # pydantic models
        return value.model_dump(mode="json")
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def error_info(exc: BaseException) -> dict[str, Any]:
    """The ``error`` field of an error record: type, node, message (+ cause, details; status and
    detail for an :class:`~dagserve.HTTPError` a node raised)."""
    info: dict[str, Any] = {"type": type(exc).__name__, "node": getattr(exc, "node", None), "message": str(exc)}
    if isinstance(exc, HTTPError):  # a status a node chose: as the ingress would answer it
        info.update(type=exc.error_type, status=exc.status_code)
        if exc.detail is not None and not isinstance(exc.detail, str):
            info["detail"] = exc.detail
    if isinstance(exc, NodeError):
        info["cause"] = exc.error_type
    if isinstance(exc, InputValidationError):
        info["details"] = exc.errors
    return info


def encode_record(row: Row, result: MapResult[Row]) -> tuple[bool, str]:
    """One output line (without newline) for ``row``; ``(ok, line)``."""
    if result.ok:
        try:
            return True, json.dumps(
                {"index": row.index, "line": row.line, "ok": True, "output": result.value},
                default=_json_default,
                ensure_ascii=False,
            )
        except (TypeError, ValueError) as exc:
            err: BaseException = BatchError(f"The graph's output is not JSON serialisable: {exc}.")
    else:
        assert result.error is not None  # set on every failed result by _Dispatcher
        err = result.error
    record = {"index": row.index, "line": row.line, "ok": False, "error": error_info(err)}
    return False, json.dumps(record, default=repr, ensure_ascii=False)


@dataclass
class _Scan:
    path: Path
    # (index, byte offset where the record starts, ok) for each complete record
    records: list[tuple[int, int, bool]]
    end: int  # byte offset after the last complete record
    unterminated: bool = False  # the last complete record lacks its newline


def _scan(path: Path) -> _Scan:
    records: list[tuple[int, int, bool]] = []
    offset = end = 0
    unterminated = False
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            start = offset
            offset += len(raw)
            if not raw.endswith(b"\n"):
                # The last line of a killed run. A record is one JSON object, and no cut-off part
                # of one parses: a line that parses was written whole and only its newline is
                # missing, so it is kept; anything else is torn, dropped and redone on resume.
                try:
                    json.loads(raw)
                except ValueError:
                    break
                unterminated = True
            try:
                rec = json.loads(raw)
                index, ok = rec["index"], rec["ok"]
                if not isinstance(index, int) or not isinstance(ok, bool):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise BatchError(
                    f"Line {line_no} of {str(path)!r} is not a dagserve batch record, so the file cannot be "
                    "resumed; pass --overwrite to start it over, or write to another file."
                ) from None
            if records and index <= records[-1][0]:
                raise BatchError(
                    f"{str(path)!r} has record {index} after record {records[-1][0]} at line {line_no}; it was not "
                    "written by one batch run, so it cannot be resumed. Pass --overwrite or write to another file."
                )
            records.append((index, start, ok))
            end = offset
    return _Scan(path, records, end, unterminated)


def recover(paths: list[Path]) -> tuple[int, int]:
    """Where a run writing ``paths`` (output, and errors file if any) stopped.

    Returns ``(done, failed)``: every record with index below ``done`` is in one of the files,
    ``failed`` of them are error records. Files are truncated to exactly those records, which drops
    a half-written last line and anything written past a gap (when output and errors files were
    flushed at different moments), so a resumed run neither loses nor duplicates a record. A
    whole last record that lacks only its newline is kept, and gets its newline.
    """
    scans = [_scan(p) for p in paths if p.exists()]
    seen = {index for s in scans for index, _, _ in s.records}
    done = 0
    while done in seen:
        done += 1
    failed = 0
    for s in scans:
        cut = s.end
        for index, start, ok in s.records:
            if index >= done:
                cut = start
                break
            failed += not ok
        if cut != s.path.stat().st_size:
            with s.path.open("r+b") as f:
                f.truncate(cut)
        elif s.unterminated:
            with s.path.open("ab") as f:
                f.write(b"\n")  # so the resumed run's first record starts a line of its own
    return done, failed


# --------------------------------------------------------------------------------------------
# The batch run
# --------------------------------------------------------------------------------------------


@dataclass
class BatchSummary:
    """What a :func:`run_batch` did. ``processed``/``succeeded``/``failed`` count this run;
    ``resumed_from`` records were already in the output (``previously_failed`` of them errors)."""

    total: int
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    resumed_from: int = 0
    previously_failed: int = 0
    seconds: float = 0.0
    node_seconds: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def throughput(self) -> float:
        """Payloads per second in this run."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def total_failed(self) -> int:
        """Error records in the whole output (this run and the ones it resumed)."""
        return self.failed + self.previously_failed

    @property
    def total_written(self) -> int:
        return self.resumed_from + self.processed

    def add(self, ok: bool, timings: dict[str, float]) -> None:
        """Count one written record and its per-node seconds."""
        self.processed += 1
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1
        for name, seconds in timings.items():
            self.node_seconds[name] = self.node_seconds.get(name, 0.0) + seconds

    def node_shares(self) -> dict[str, float]:
        """Each node's share (0..1) of the summed per-node time, largest first."""
        total = sum(self.node_seconds.values())
        if total <= 0:
            return {}
        return {k: v / total for k, v in sorted(self.node_seconds.items(), key=lambda kv: -kv[1])}


def run_batch(
    app: App,
    input_path: Path,
    output_path: Path,
    *,
    fmt: str | None = None,
    concurrency: int = 64,
    resume: bool = False,
    overwrite: bool = False,
    errors_path: Path | None = None,
    on_progress: Callable[[BatchSummary], None] | None = None,
    on_start: Callable[[BatchSummary], None] | None = None,
) -> BatchSummary:
    """Run ``app`` over every record of ``input_path``; write one JSON line per record, in order.

    Successful records are ``{"index", "line", "ok": true, "output"}``; failed ones
    ``{"index", "line", "ok": false, "error": {"type", "node", "message", ...}}``, written to
    ``errors_path`` when given, else to the output. ``resume`` continues a previous run's files.
    ``on_progress`` is called after each record with the running summary.
    """
    concurrency = _check_concurrency(concurrency, "run_batch")
    fmt = detect_format(input_path, fmt)
    outputs = _check_outputs(output_path, errors_path, resume=resume, overwrite=overwrite)
    total = count_rows(input_path, fmt)
    done, prior_failed = recover(outputs) if resume else (0, 0)
    if done > total:
        raise BatchError(
            f"{str(output_path)!r} already holds {done} records but {str(input_path)!r} has only {total}; is this "
            "the same input? Pass --overwrite to start over."
        )
    summary = BatchSummary(total=total, resumed_from=done, previously_failed=prior_failed)
    mode = "a" if resume else "w"
    for p in outputs:
        p.parent.mkdir(parents=True, exist_ok=True)
    out = output_path.open(mode, encoding="utf-8", newline="\n")
    err = errors_path.open(mode, encoding="utf-8", newline="\n") if errors_path is not None else out
    if on_start is not None:
        on_start(summary)

    async def call(row: Row, ctx: RequestContext) -> Any:
        if row.error is not None:
            raise row.error
        return await app.acall(row.payload, context=ctx)

    start = time.perf_counter()
    last_flush = time.monotonic()
    results = map_results(
        app, read_rows(input_path, fmt, skip=done), concurrency=concurrency, ordered=True, call=call, protocol="batch"
    )
    try:
        for r in results:
            ok, line = encode_record(r.payload, r)
            (out if ok else err).write(line + "\n")
            summary.add(ok, r.timings)
            now = time.monotonic()
            if now - last_flush >= _FLUSH_EVERY_S:
                _flush(out, err)
                last_flush = now
            if on_progress is not None:
                on_progress(summary)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        results.close()  # type: ignore[attr-defined]
        summary.seconds = time.perf_counter() - start
        # Errors first: if we die between the two, recover() sees a gap and cuts back to it.
        _flush(out, err)
        if err is not out:
            err.close()
        out.close()
    return summary


def _check_outputs(output_path: Path, errors_path: Path | None, *, resume: bool, overwrite: bool) -> list[Path]:
    """The files a run writes; a :class:`BatchError` when they clash or would be overwritten unasked."""
    outputs = [output_path] + ([errors_path] if errors_path is not None else [])
    if errors_path is not None and errors_path.resolve() == output_path.resolve():
        raise BatchError(
            "The errors file and the output file are the same; drop --errors to keep errors in the output."
        )
    if not resume and not overwrite:
        for p in outputs:
            if p.exists() and p.stat().st_size > 0:
                raise BatchError(
                    f"{str(p)!r} already exists; pass --resume to continue that run or --overwrite to replace it."
                )
    return outputs


def _flush(out: Any, err: Any) -> None:
    if err is not out:
        err.flush()
    out.flush()
