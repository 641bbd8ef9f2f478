"""What a node's failure becomes: the typed error every backend raises for it.

A node's exception becomes a :class:`~dagserve.NodeError` naming the node, except an HTTP error
the node chose: :class:`~dagserve.HTTPError`, or Starlette's (and so FastAPI's) ``HTTPException``,
recognised by its class and attributes since this layer never imports Starlette. Those become a
:class:`~dagserve.HTTPError` with the node named, so the request answers with their status.
Shared by the executor, the Ray replicas and the Ray runner.
"""

from __future__ import annotations

import os
import sysconfig
import traceback
from typing import Any

from dagserve._errors import DagserveError, HTTPError, NodeError, RequestTimeoutError

__all__ = ["blame", "http_exception", "node_failure", "node_timeout_error", "node_traceback"]

#: Modules whose ``HTTPException`` (or a subclass) a node may raise to choose its status.
_HTTP_EXCEPTION_MODULES = ("starlette.", "fastapi.")


def node_failure(name: str, exc: BaseException) -> DagserveError:
    """The typed error for node ``name`` raising ``exc`` (see the module docstring)."""
    if isinstance(exc, DagserveError):
        return blame(exc, name)
    http = http_exception(name, exc)
    if http is not None:
        return http
    text = str(exc) or "(no message)"
    return NodeError(
        f"Node {name!r} raised {type(exc).__name__}: {text}",
        node=name,
        error_type=type(exc).__name__,
        traceback=node_traceback(exc),
    )


# -- the traceback a node's failure carries to the server's log ---------------------------------------

_DAGSERVE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_STDLIB_DIR = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep
#: Installed packages whose frames are the serving machinery around node code, not the node's own.
_MACHINERY = frozenset({"ray", "starlette", "uvicorn", "anyio", "uvloop"})
#: Standard library modules that only carry a call to node code (event loop, thread pools).
_STDLIB_MACHINERY = frozenset({"asyncio", "concurrent", "threading.py", "contextvars", "functools.py"})


def _machinery(filename: str) -> bool:
    """Is a frame in ``filename`` dagserve's, Ray's or the event loop's (not the node's code)?"""
    path = os.path.abspath(filename)
    if path.startswith(_DAGSERVE_DIR):
        return True
    parts = path.split(os.sep)
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            last = len(parts) - 1 - parts[::-1].index(marker)  # the innermost one
            return last + 1 < len(parts) and parts[last + 1] in _MACHINERY
    if path.startswith(_STDLIB_DIR):
        return path[len(_STDLIB_DIR) :].split(os.sep, 1)[0] in _STDLIB_MACHINERY
    return False


def node_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as text (with its causes), the node code's frames kept and each run
    of dagserve's, Ray's and the event loop's frames folded into one marked line."""
    te = traceback.TracebackException.from_exception(exc, capture_locals=False)
    chain: list[tuple[traceback.TracebackException, str | None]] = []
    seen: set[int] = set()
    link: str | None = None
    current: traceback.TracebackException | None = te
    while current is not None and id(current) not in seen:  # the causes, innermost last as Python prints
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, "The above exception was the direct cause of the following exception:"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, "During handling of the above exception, another exception occurred:"
        else:
            current = None
    lines: list[str] = []
    for each, link in reversed(chain):  # the innermost cause first, as Python prints them
        lines.append("Traceback (most recent call last):\n")
        hidden = 0
        for frame in each.stack:
            if _machinery(frame.filename):
                hidden += 1
                continue
            if hidden:
                lines.append(f"  [{hidden} frame(s) of dagserve, Ray or the event loop hidden]\n")
                hidden = 0
            lines.extend(traceback.StackSummary.from_list([frame]).format())
        if hidden:
            lines.append(f"  [{hidden} frame(s) of dagserve, Ray or the event loop hidden]\n")
        lines.extend(each.format_exception_only())
        if link is not None:
            lines.append(f"\n{link}\n\n")
    return "".join(lines)


def blame(exc: DagserveError, name: str) -> DagserveError:
    """Name node ``name`` on an :class:`HTTPError` it raised (unless one is named already)."""
    if isinstance(exc, HTTPError) and exc.node is None:
        exc.node = name
    return exc


def node_timeout_error(name: str, timeout_s: float) -> RequestTimeoutError:
    """A call of node ``name`` outlived its ``timeout_s`` (a runner that times calls itself raises this too)."""
    return RequestTimeoutError(
        f"Node {name!r} did not answer within its timeout_s={timeout_s:g}; raise timeout_s or make the node faster.",
        node=name,
    )


def http_exception(name: str, exc: BaseException) -> HTTPError | None:
    """``starlette.exceptions.HTTPException`` (and subclasses, FastAPI's) that node ``name``
    raised, as an :class:`HTTPError`; ``None`` for any other exception."""
    if not any(_is_http_exception(cls) for cls in type(exc).__mro__):
        return None
    status = getattr(exc, "status_code", None)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        return None  # a redirect or a success "raised": not an error status, so a node failure
    headers: Any = getattr(exc, "headers", None)
    err = HTTPError(status, getattr(exc, "detail", None), headers=dict(headers) if headers else None)
    err.error_type = type(exc).__name__
    err.node = name
    return err


def _is_http_exception(cls: type) -> bool:
    return cls.__name__ == "HTTPException" and (cls.__module__ + ".").startswith(_HTTP_EXCEPTION_MODULES)
