"""What a node's failure becomes: the typed error every backend raises for it.

A node's exception becomes a :class:`~dagserve.NodeError` naming the node, except an HTTP error
the node chose: :class:`~dagserve.HTTPError`, or Starlette's (and so FastAPI's) ``HTTPException``,
recognised by its class and attributes since this layer never imports Starlette. Those become a
:class:`~dagserve.HTTPError` with the node named, so the request answers with their status.
Shared by the executor, the Ray replicas and the Ray runner.
"""

from __future__ import annotations

from typing import Any

from dagserve._errors import DagserveError, HTTPError, NodeError, RequestTimeoutError

__all__ = ["blame", "http_exception", "node_failure", "node_timeout_error"]

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
    return NodeError(f"Node {name!r} raised {type(exc).__name__}: {text}", node=name, error_type=type(exc).__name__)


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
