"""Where the CLI prints: a rich console that never cuts values when its output is not a terminal.

rich sizes a console that writes to a pipe or a file as 80 columns wide and shortens table cells
to fit (``replic…``, ``67.7…``). Nobody reads a pipe at a terminal's width, and a script that
parses the output needs whole values, so there the width is unbounded and tables take the width
their cells need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["console"]

#: The width of a console that writes to a pipe or a file: wide enough for any table's row.
UNBOUNDED_WIDTH = 100_000


def console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr): a terminal's width on a terminal, unbounded elsewhere."""
    from rich.console import Console

    out = Console(stderr=stderr)
    if out.is_terminal:
        return out
    return Console(stderr=stderr, width=UNBOUNDED_WIDTH)
