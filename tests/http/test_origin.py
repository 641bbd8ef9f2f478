"""check_same_origin against the headers browsers send (Chromium, Firefox, Safari) and programs send."""

from __future__ import annotations

from typing import Any

import pytest

from dagserve.http.errors import HTTPError
from dagserve.http.origin import check_same_origin


def scope(headers: dict[str, str], scheme: str = "http") -> dict[str, Any]:
    return {"type": "http", "scheme": scheme, "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}


@pytest.mark.parametrize(
    "headers",
    [
        {"host": "127.0.0.1:8000"},  # curl, requests, tritonclient: neither Origin nor Sec-Fetch-Site
        {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"},  # /docs
        {"host": "localhost:8000", "origin": "http://LOCALHOST:8000"},
        {"host": "api.example.com", "origin": "https://api.example.com", "sec-fetch-site": "same-origin"},  # TLS proxy
        {"host": "api.example.com:443", "origin": "https://api.example.com"},
        {"host": "127.0.0.1:8000", "sec-fetch-site": "none"},  # typed in the address bar, a bookmark
        # Behind a proxy that rewrites Host, the browser's Sec-Fetch-Site still says same-origin.
        {"host": "backend:8000", "origin": "https://models.example", "sec-fetch-site": "same-origin"},
    ],
)
def test_programs_and_the_servers_own_pages_pass(headers: dict[str, str]) -> None:
    check_same_origin(scope(headers))


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        # A form on another site posting multipart (Chromium sends both headers).
        ({"host": "127.0.0.1:8000", "origin": "https://evil.example", "sec-fetch-site": "cross-site"}, "'cross-site'"),
        # A page on another port of the same host is same-site but another origin.
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:9999", "sec-fetch-site": "same-site"}, "'same-site'"),
        # Old browsers without Fetch Metadata still send Origin on a cross-origin POST.
        ({"host": "127.0.0.1:8000", "origin": "http://evil.example"}, "Origin is 'http://evil.example'"),
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:9999"}, "Origin is 'http://127.0.0.1:9999'"),
        # Sandboxed iframes and file: pages send the opaque origin.
        ({"host": "127.0.0.1:8000", "origin": "null"}, "Origin is 'null'"),
        ({"host": "api.example.com", "origin": "https://api.example.com.evil.example"}, "not this server"),
        ({"origin": "http://127.0.0.1:8000"}, "no Host header"),
        # Fetch Metadata alone is enough (Origin can be absent in some redirects).
        ({"host": "127.0.0.1:8000", "sec-fetch-site": "cross-site"}, "Sec-Fetch-Site header says 'cross-site'"),
    ],
)
def test_pages_of_other_origins_are_refused_with_403(headers: dict[str, str], why: str) -> None:
    with pytest.raises(HTTPError, match="comes from a web page of another origin") as info:
        check_same_origin(scope(headers))
    assert info.value.status_code == 403
    assert info.value.error_type == "CrossOriginRefused"
    assert why in str(info.value)
