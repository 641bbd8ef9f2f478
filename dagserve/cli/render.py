"""``dagserve render``: draw a graph as a diagram (the drawing is in :mod:`dagserve.render`)."""

from __future__ import annotations

from pathlib import Path

import click

from dagserve._errors import DagserveError
from dagserve.cli.targets import InputError, app_dir_option, load_target
from dagserve.compiler.plan import Plan
from dagserve.graph import Graph
from dagserve.render import FORMATS, render, to_dot

__all__ = ["render_command"]


@click.command("render")
@click.argument("target", metavar="MODULE:ATTR")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File to write: .svg, .png, .pdf or .dot. Without it the DOT source goes to stdout.",
)
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(sorted(set(FORMATS.values()))),
    default=None,
    help="Output format when the file's suffix does not say it.",
)
@app_dir_option
def render_command(target: str, output: Path | None, fmt: str | None, app_dir: str | None) -> None:
    """Draw the graph MODULE:ATTR (e.g. examples.quickstart:graph) as a diagram."""
    obj = load_target(target, app_dir)
    if not isinstance(obj, (Graph, Plan)):
        raise InputError(f"{target!r} is a {type(obj).__name__}, not a dagserve.Graph.", "MODULE:ATTR")
    try:
        if output is None:
            if fmt not in (None, "dot"):
                raise click.UsageError(f"--format {fmt} writes a binary file; give it a path with -o FILE.")
            click.echo(to_dot(obj), nl=False)
            return
        path = render(obj, output, format=fmt)
    except DagserveError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Wrote {path}", err=True)
