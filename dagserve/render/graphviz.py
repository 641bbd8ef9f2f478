"""Running Graphviz's ``dot``: which formats, where the program is, and its output."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from dagserve._errors import GraphvizNotFoundError, RenderError

#: Output format by file suffix.
FORMATS: dict[str, str] = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}
#: A ``dot`` run taking longer than this fails with RenderError (200 nodes take about a second).
DOT_TIMEOUT_S = 60.0

_INSTALL_HINT = (
    "Install Graphviz (Debian/Ubuntu: `sudo apt-get install graphviz`; macOS: `brew install graphviz`; "
    "conda: `conda install -c conda-forge graphviz`), or write DOT source instead with graph.to_dot() "
    "or a .dot path."
)




def _dot_executable() -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizNotFoundError(
            f"Drawing a diagram needs Graphviz's `dot` program, which is not on PATH. {_INSTALL_HINT}"
        )
    return exe


def _format_for(path: Path, format: str | None) -> str:  # noqa: A002
    if format is not None:
        fmt = format.lower().lstrip(".")
        if fmt not in set(FORMATS.values()):
            raise RenderError(f"Unknown diagram format {format!r}; use one of: svg, png, pdf, dot.")
        return fmt
    fmt_or_none = FORMATS.get(path.suffix.lower())
    if fmt_or_none is None:
        raise RenderError(
            f"Cannot tell the diagram format from {str(path)!r}; end the path with .svg, .png, .pdf or .dot, "
            "or pass format=."
        )
    return fmt_or_none


def _run_dot(source: str, fmt: str) -> bytes:
    exe = _dot_executable()
    try:
        done = subprocess.run(
            [exe, f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True, timeout=DOT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise RenderError(
            f"Graphviz's dot did not finish drawing within {DOT_TIMEOUT_S:g} s; the graph may be too large to draw."
        ) from None
    except OSError as exc:
        raise RenderError(f"Could not run Graphviz's dot at {exe!r}: {exc}. {_INSTALL_HINT}") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip()[-600:]
        raise RenderError(
            f"Graphviz's dot failed (exit code {done.returncode}) drawing {fmt}: {detail or 'no message'}"
        )
    return done.stdout


@functools.lru_cache(maxsize=8)
def _svg(source: str) -> str:
    # Cached by source: a notebook re-displaying a graph, or a live view polled while nothing
    # changed, does not start dot again.
    return _run_dot(source, "svg").decode("utf-8")
