"""``dagserve batch``: run a graph over a file of payloads (the work is in :mod:`dagserve.offline.files`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dagserve._errors import DagserveError
from dagserve.app import deploy
from dagserve.cli.output import console as cli_console
from dagserve.cli.targets import InputError, app_dir_option, load_target
from dagserve.graph import Graph
from dagserve.offline.files import BatchError, BatchSummary, detect_format, run_batch

__all__ = ["batch_command"]


@click.command("batch")
@click.argument("target", metavar="MODULE:ATTR")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", "output_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="JSON Lines file to write: one record per input record, in input order.",
)
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run the graph in this process (local) or on Ray Serve (ray).")
@click.option("--address", default=None, help="Ray cluster address (with --backend ray); default: a new local Ray.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=64, show_default=True,
              help="Payloads in flight at once; give batched nodes at least max_batch_size x replicas.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]), default=None,
              help="Input format; default: from INPUT's suffix.")
@click.option("--resume", is_flag=True, help="Continue a killed run: skip the records OUTPUT already holds.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT (and --errors file).")
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write error records to this file instead of OUTPUT.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar (default: when stderr is a terminal).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as one JSON object on stdout instead of tables on stderr.")
@app_dir_option
def batch_command(
    target: str,
    input_path: Path,
    output_path: Path,
    backend: str,
    address: str | None,
    concurrency: int,
    fmt: str | None,
    resume: bool,
    overwrite: bool,
    errors_path: Path | None,
    progress: bool | None,
    as_json: bool,
    app_dir: str | None,
) -> None:
    """Run the graph MODULE:ATTR over every record of INPUT (JSON Lines, CSV or Parquet).

    Writes one JSON line per input record to OUTPUT, in input order. A record that fails
    (unreadable line, schema error, node error) becomes an error record with its line number
    and the run continues; the exit status is 1 when any failed. Example:

        dagserve batch examples.quickstart:graph reviews.jsonl -o scores.jsonl
    """
    console = cli_console(stderr=True)
    graph = load_target(target, app_dir)
    if not isinstance(graph, Graph):
        raise InputError(
            f"{target!r} is a {type(graph).__name__}, not a dagserve.Graph; point at the Graph object.", "MODULE:ATTR"
        )
    if address is not None and backend != "ray":
        raise click.UsageError("--address is for --backend ray.")
    try:
        detect_format(input_path, fmt)
    except BatchError as exc:
        raise InputError(str(exc), "INPUT") from None
    for p in [output_path] + ([errors_path] if errors_path else []):
        if p.exists() and p.stat().st_size > 0 and not (resume or overwrite):
            # Checked before deploying too, so a mistake costs no Ray start-up.
            raise InputError(
                f"{str(p)!r} already exists; pass --resume to continue that run or --overwrite to replace it."
            )
    show = console.is_terminal if progress is None else progress
    options = {"address": address} if address is not None else {}
    t0 = time.perf_counter()
    try:
        app = deploy(graph, backend=backend, **options)
    except DagserveError as exc:
        raise click.ClickException(f"deploying {target} failed: {exc}") from None
    took = time.perf_counter() - t0
    console.print(f"deployed {graph.name!r} on {backend} in {took:.1f} s", style="dim", markup=False)
    try:
        with _ProgressBar(console, show) as (on_start, on_progress):
            summary = run_batch(
                app, input_path, output_path, fmt=fmt, concurrency=concurrency, resume=resume,
                overwrite=overwrite, errors_path=errors_path, on_progress=on_progress, on_start=on_start,
            )
    except BatchError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        app.shutdown()
    if as_json:
        click.echo(json.dumps(_summary_json(summary, output_path, errors_path)))
    else:
        _print_summary(console, summary, output_path, errors_path)
    if summary.interrupted:
        console.print(
            f"Interrupted after {summary.total_written} of {summary.total} records; run the same command "
            "with --resume to continue.",
            style="yellow",
        )
        raise SystemExit(130)
    if summary.total_failed:
        where = errors_path if errors_path is not None else output_path
        console.print(
            f"{summary.total_failed} of {summary.total_written} failed; see the error records in {str(where)!r}.",
            style="red",
            markup=False,
        )
        raise SystemExit(1)



class _ProgressBar:
    """A rich progress bar (rate, ETA, failures) fed by ``run_batch``'s callbacks; or nothing."""

    def __init__(self, console: Any, show: bool) -> None:
        self.console = console
        self.show = show
        self.bar: Any = None
        self.task: Any = None
        self.shown = 0
        self.started = time.perf_counter()

    def __enter__(self) -> tuple[Callable[[BatchSummary], None], Callable[[BatchSummary], None]]:
        if self.show:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("[red]{task.fields[failed]}"),
                console=self.console,
            )
            self.bar.start()
        return self.on_start, self.on_progress

    def on_start(self, summary: BatchSummary) -> None:
        if self.bar is not None:
            self.task = self.bar.add_task(
                "batch", total=summary.total, completed=summary.resumed_from, rate="", failed=""
            )
            self.shown = summary.resumed_from
            self.started = time.perf_counter()

    def on_progress(self, summary: BatchSummary) -> None:
        if self.task is None:
            return
        done = summary.total_written
        # rich redraws ~10 times a second; updating it per record would cost more than small graphs do.
        if done - self.shown < 64 and done != summary.total:
            return
        elapsed = time.perf_counter() - self.started
        rate = summary.processed / elapsed if elapsed > 0 else 0.0
        failed = summary.total_failed
        self.bar.update(
            self.task, advance=done - self.shown, rate=f"{rate:,.0f}/s", failed=f"{failed} failed" if failed else ""
        )
        self.shown = done

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _summary_json(s: BatchSummary, output_path: Path, errors_path: Path | None) -> dict[str, Any]:
    """What :func:`_print_summary` shows, as a JSON document."""
    return {
        "total": s.total, "processed": s.processed, "succeeded": s.succeeded, "failed": s.failed,
        "resumed_from": s.resumed_from, "previously_failed": s.previously_failed, "seconds": s.seconds,
        "throughput_per_s": s.throughput, "interrupted": s.interrupted, "output": str(output_path),
        "errors": str(errors_path) if errors_path else None,
        "node_seconds": dict(s.node_seconds), "node_shares": s.node_shares(),
    }


def _print_summary(console: Any, s: BatchSummary, output_path: Path, errors_path: Path | None) -> None:
    from rich.markup import escape
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column(justify="right")
    if s.resumed_from:
        head.add_row("resumed after", f"{s.resumed_from:,} records ({s.previously_failed:,} failed)")
    head.add_row("processed", f"{s.processed:,}")
    head.add_row("succeeded", f"{s.succeeded:,}")
    head.add_row("failed", f"{s.failed:,}")
    head.add_row("time", f"{s.seconds:.2f} s")
    head.add_row("throughput", f"{s.throughput:,.1f} payloads/s")
    head.add_row("output", escape(str(output_path) + (f" (errors: {errors_path})" if errors_path else "")))
    console.print(head)
    shares = s.node_shares()
    if shares:
        table = Table(title="time per node (share of summed node time)", title_justify="left")
        table.add_column("node")
        table.add_column("share", justify="right")
        table.add_column("total s", justify="right")
        table.add_column("ms/payload", justify="right")
        for name, share in shares.items():
            seconds = s.node_seconds[name]
            mean = seconds / s.processed * 1000 if s.processed else math.nan
            table.add_row(escape(name), f"{share:.0%}", f"{seconds:.2f}", f"{mean:.2f}")
        console.print(table)
