"""The files the ingress's pages load (``GET /-/static/<path>``), shipped inside the package.

Pages load nothing from another origin: the dashboard's own script and style
(``static/dashboard/``) and Swagger UI for ``/docs`` (``static/swagger-ui/``, vendored from the
``swagger-ui-dist`` npm package at the version :data:`VENDORED` names, with its licence) are
served from here, so they work with the network off. ``static/vendor.json`` records each
vendored file's SHA-256 (a test checks the files against it; ``scripts/vendor_swagger_ui.sh``
writes both). Only files present in the package when it is imported are served: the path is a
key looked up in that listing, never joined onto a directory.

Every page sends :data:`PAGE_CSP` (or :data:`DOCS_CSP`): scripts, styles, images and requests
from the server's own origin only, no inline script, no framing by another site.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagserve.http.errors import HTTPError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = [
    "DOCS_CSP",
    "PAGE_CSP",
    "STATIC_DIR",
    "STATIC_PREFIX",
    "VENDORED",
    "page_headers",
    "static_endpoint",
    "static_files",
    "vendored",
]

#: Where the files are served, relative to the ingress's root.
STATIC_PREFIX = "/-/static"
STATIC_DIR = Path(__file__).with_name("static")

#: Content-Security-Policy of the dashboard: everything from this origin, nothing inline.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Swagger UI sets style attributes from its script (React), which needs 'unsafe-inline' styles;
#: scripts stay this origin's files only.
DOCS_CSP = PAGE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}


def page_headers(csp: str = PAGE_CSP) -> dict[str, str]:
    """Headers of an HTML page of the ingress: its CSP, no caching, no sniffing, no referrer."""
    return {
        "content-security-policy": csp,
        "cache-control": "no-store",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "x-frame-options": "DENY",
    }


@functools.cache
def static_files() -> dict[str, Path]:
    """Served path (``"dashboard/dashboard.js"``) -> file, for every file under ``static/``."""
    return {p.relative_to(STATIC_DIR).as_posix(): p for p in sorted(STATIC_DIR.rglob("*")) if p.is_file()}


@functools.cache
def vendored() -> dict[str, Any]:
    """``static/vendor.json``: per vendored package its version, tarball digest and files' SHA-256."""
    data: dict[str, Any] = json.loads((STATIC_DIR / "vendor.json").read_text(encoding="utf-8"))
    return data


#: The vendored packages and their versions, e.g. ``{"swagger-ui-dist": "5.35.0"}``.
VENDORED = {name: info["version"] for name, info in vendored().items()}


@functools.cache
def _etag(path: str) -> str:
    return '"' + hashlib.sha256(static_files()[path].read_bytes()).hexdigest()[:32] + '"'


async def static_endpoint(request: Request) -> Response:
    """``GET /-/static/{path}``: a packaged file, revalidated by its ETag (304 when unchanged)."""
    from starlette.responses import FileResponse, Response

    path = request.path_params["path"]
    file = static_files().get(path)
    if file is None:
        raise HTTPError(404, f"There is no static file {path!r}.")
    etag = _etag(path)
    headers = {"etag": etag, "cache-control": "no-cache", "x-content-type-options": "nosniff"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    media = _TYPES.get(file.suffix, "text/plain; charset=utf-8")
    return FileResponse(file, media_type=media, headers=headers)
