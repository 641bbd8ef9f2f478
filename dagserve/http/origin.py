"""Is a request from a browser page of another site? The rule for bodies a page may send anywhere.

A web page may POST some bodies to any server without asking first (no CORS preflight): no
``Content-Type`` at all, ``multipart/form-data``, ``text/plain``. The JSON routes refuse such
types outright; routes that must take them (the OIP infer routes, which ``tritonclient.http``
calls without a type, and multipart uploads) accept them only from a request that does not come
from a page of another origin. Browsers say where a request comes from and cannot be made to
lie: ``Origin`` on every cross-origin POST, ``Sec-Fetch-Site`` on every request of a modern
browser. Programs (curl, tritonclient, requests) send neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagserve.http.errors import HTTPError

if TYPE_CHECKING:
    from starlette.types import Scope

__all__ = ["check_same_origin"]


def check_same_origin(scope: Scope) -> None:
    """Raise a 403 :class:`HTTPError` saying why when ``scope`` is a request from a browser page
    of another origin: an ``Origin`` header other than the server's own, or
    ``Sec-Fetch-Site: cross-site`` / ``same-site``."""
    origin = host = fetch_site = None
    for key, value in scope["headers"]:
        if key == b"origin" and origin is None:
            origin = value.decode("latin-1").strip()
        elif key == b"host" and host is None:
            host = value.decode("latin-1").strip()
        elif key == b"sec-fetch-site" and fetch_site is None:
            fetch_site = value.decode("latin-1").strip().lower()
    if fetch_site in ("cross-site", "same-site"):
        raise HTTPError(
            403,
            f"This request comes from a web page of another site (Sec-Fetch-Site: {fetch_site}); a page may send "
            "this body without the server's consent, so this route refuses it. Call it from a program, or send "
            "JSON (Content-Type: application/json) to the graph's JSON route.",
            error_type="CrossOriginRefused",
        )
    if origin is not None and origin.lower() not in _own_origins(scope, host):
        raise HTTPError(
            403,
            f"This request comes from a web page at {origin!r}, not from this server's own origin; a page may send "
            "this body without the server's consent, so this route refuses it. Call it from a program, or send "
            "JSON (Content-Type: application/json) to the graph's JSON route.",
            error_type="CrossOriginRefused",
        )


def _own_origins(scope: Scope, host: str | None) -> set[str]:
    if not host:
        return set()
    scheme = scope.get("scheme", "http")
    return {f"{scheme}://{host}".lower()}
