"""Refusing requests a web page of another origin sent: :func:`check_same_origin`.

A page on any site can make the browser POST to ``http://127.0.0.1:8000`` without asking the
server first when the body is a "simple" one: no ``Content-Type``, or
``multipart/form-data``, ``application/x-www-form-urlencoded`` or ``text/plain`` (an HTML form,
or ``fetch`` in ``no-cors`` mode). Any other type (``application/json``, ``image/png``) makes the
browser ask first (a CORS preflight), which dagserve never grants, so such a request never
leaves the browser. The ingress therefore takes JSON from anyone who holds the token, and runs
this check on every graph request whose body is not JSON (multipart, raw bytes; a body with no
type on the OIP routes): beyond the four simple types, the check also covers types a browser
might parse differently from us (``image/png, text/plain``), at no cost for programs, which send
no ``Origin``.

What browsers send: ``Origin`` on every cross-origin request and on every POST (``null`` from
sandboxed frames and ``file:`` pages); ``Sec-Fetch-Site`` (``same-origin``, ``same-site``,
``cross-site`` or ``none``) on all requests since 2020-2023. Programs (curl, requests,
tritonclient) send neither. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dagserve.http.errors import HTTPError

__all__ = ["check_same_origin"]

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def check_same_origin(scope: dict[str, Any]) -> None:
    """Raise a 403 :class:`HTTPError` if the request comes from a web page of another origin.

    Refused: ``Sec-Fetch-Site: cross-site`` or ``same-site``; without Fetch Metadata (older
    browsers), an ``Origin`` header that is ``null`` or whose host and port differ from the
    request's ``Host``. The server's own pages (``/docs``) pass, and so do programs, which send
    neither header. ``scope`` is the ASGI scope.
    """
    origin = site = host = None
    for key, value in scope["headers"]:
        if key == b"origin" and origin is None:
            origin = value.decode("latin-1").strip()
        elif key == b"sec-fetch-site" and site is None:
            site = value.decode("latin-1").strip().lower()
        elif key == b"host" and host is None:
            host = value.decode("latin-1").strip().lower()
    if site in ("cross-site", "same-site"):
        raise _refused(f"its Sec-Fetch-Site header says {site!r}")
    if site in ("same-origin", "none"):
        # The browser's own word, which no page can forge; it holds behind a proxy that rewrites Host.
        return
    if origin is not None and _authority(origin) != _host_authority(host, scope.get("scheme", "http")):
        raise _refused(f"its Origin is {origin[:100]!r}, not this server ({host or 'no Host header'})")


def _refused(why: str) -> HTTPError:
    return HTTPError(
        403,
        f"This request comes from a web page of another origin ({why}). Bodies other than JSON (files, "
        "forms, raw bytes) are accepted only from programs such as curl and from this server's own "
        "pages; a web page must send JSON, which browsers send only with the server's consent.",
        error_type="CrossOriginRefused",
    )


def _authority(origin: str) -> str | None:
    """``host[:port]`` of an ``Origin`` (``scheme://host[:port]``), the scheme's default port dropped;
    ``None`` for ``null`` or anything else that is not an origin."""
    scheme, sep, rest = origin.lower().partition("://")
    if not sep or not rest or "/" in rest or "@" in rest:
        return None
    return _drop_port(rest, (_DEFAULT_PORTS.get(scheme),))


def _host_authority(host: str | None, scheme: str) -> str | None:
    if not host:
        return None
    # Behind a TLS proxy the page is https while the server speaks http: either default port is ours.
    return _drop_port(host, (_DEFAULT_PORTS.get(scheme), *_DEFAULT_PORTS.values()))


def _drop_port(authority: str, defaults: Iterable[str | None]) -> str:
    for port in defaults:
        if port is not None and authority.endswith(f":{port}"):
            return authority[: -len(port) - 1]
    return authority
