"""Where the CLI prints: a rich console that never cuts values when its output is not a terminal;
and, for ``dagserve run --log-format json``, the command's own lines as JSON records.

rich sizes a console that writes to a pipe or a file as 80 columns wide and shortens table cells
to fit (``replic…``, ``67.7…``). Nobody reads a pipe at a terminal's width, and a script that
parses the output needs whole values, so there the width is unbounded and tables take the width
their cells need.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from dagserve.observe.logs import JsonFormatter, TraceIdFilter

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["LoggedProgress", "Say", "console", "json_handlers"]

#: The width of a console that writes to a pipe or a file: wide enough for any table's row.
UNBOUNDED_WIDTH = 100_000


def console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr): a terminal's width on a terminal, unbounded elsewhere."""
    from rich.console import Console

    out = Console(stderr=stderr)
    if out.is_terminal:
        return out
    return Console(stderr=stderr, width=UNBOUNDED_WIDTH)


# -- `--log-format json`: every line the serving process writes is a JSON object --------------------

_log = logging.getLogger("dagserve.run")


class Say:
    """A line of the command for the user (the URL, the admin token's file, "stopped"): plain
    text, or with ``json`` a JSON record of the ``dagserve.run`` logger whose ``fields`` (such
    as ``url``) are fields of the object. On stderr unless ``stdout``."""

    def __init__(self, json: bool) -> None:
        self.json = json

    def __call__(self, message: str, *, stdout: bool = False, level: int = logging.INFO, **fields: Any) -> None:
        if not self.json:
            click.echo(message, err=not stdout)
            return
        record = _log.makeRecord(
            _log.name, level, __file__, 0, message.removeprefix("dagserve: "), None, None, extra=fields
        )
        click.echo(JsonFormatter().format(record), err=not stdout)


class LoggedProgress:
    """The deploy progress display's interface (``add_task``, ``update``) as INFO records of
    ``log``, one per change of a task's description (rich markup dropped)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.shown: dict[int, str] = {}

    def __enter__(self) -> LoggedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, **_: Any) -> int:
        task = len(self.shown)
        self.shown[task] = ""
        self.update(task, description=description)
        return task

    def update(self, task: int, *, description: str | None = None, **_: Any) -> None:
        from rich.text import Text

        if description is None or description == self.shown.get(task):
            return
        self.shown[task] = description
        self.log.info("%s", Text.from_markup(description).plain)


def json_handlers() -> None:
    """Make every logger that writes to stderr or stdout with a handler of its own (Ray's do:
    they do not reach the root logger's handler) write JSON records with the request's ids."""
    streams = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger):
            continue  # a placeholder of a logger not created yet
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in streams:
                if not isinstance(handler.formatter, JsonFormatter):
                    handler.setFormatter(JsonFormatter())
                    handler.addFilter(TraceIdFilter())
