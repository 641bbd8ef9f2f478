"""Request ids: one per HTTP request, visible to node code and to log records.

The ingress takes the client's ``x-request-id`` when it is a sane token (at most 128 characters
from ``A-Z a-z 0-9 . _ : = + / @ -``) and makes one otherwise. The id goes into the response
header, into error bodies, into the request's :class:`~dagserve.RequestContext`, and into a
context variable that :func:`current_request_id` reads and :class:`RequestIdFilter` copies into
log records::

    handler = logging.StreamHandler()
    handler.addFilter(dagserve.RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s [%(request_id)s] %(message)s"))
    logging.getLogger().addHandler(handler)

Standard library only: importing it costs nothing.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re

__all__ = [
    "REQUEST_ID_HEADER",
    "RequestIdFilter",
    "current_request_id",
    "new_request_id",
    "reset_request_id",
    "sane_request_id",
    "set_request_id",
]

#: The header a request id travels in, both ways.
REQUEST_ID_HEADER = "x-request-id"

_MAX_LENGTH = 128
# Printable, header-safe and log-safe: no spaces, quotes, commas, semicolons or control bytes.
_SANE = re.compile(r"[A-Za-z0-9._:=+/@-]{1,128}")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("dagserve_request_id", default=None)


def new_request_id() -> str:
    """A fresh id: 32 lowercase hex characters (128 random bits)."""
    return os.urandom(16).hex()


def sane_request_id(value: str | bytes | None) -> str | None:
    """``value`` when it is usable as a request id (1-128 token characters), else ``None``."""
    if value is None:
        return None
    if isinstance(value, bytes):
        if len(value) > _MAX_LENGTH:
            return None
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if _SANE.fullmatch(value) else None


def current_request_id() -> str | None:
    """The id of the request being served in this context (``None`` outside a request).

    Set by the HTTP ingress for the whole request: node code running in the ingress process
    (inline nodes, async nodes on the local backend) sees it.
    """
    return _current.get()


def set_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """Make ``request_id`` current; pass the token to ``reset_request_id`` to undo."""
    return _current.set(request_id)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    """Undo :func:`set_request_id`."""
    _current.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (the current request's id, or ``default``) to every record.

    Attach it to a handler and use ``%(request_id)s`` in the format. A record that already has
    a ``request_id`` (passed with ``extra=``) keeps it.
    """

    def __init__(self, default: str = "-") -> None:
        super().__init__()
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current.get() or self.default
        return True
