"""One ingress's limits and switches (:class:`IngressConfig`) and the server defaults.

Read by the ingress (``dagserve.http.ingress``) and set by ``asgi_app`` / ``serve``
(``dagserve.http.server``); kept apart so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dagserve._errors import OptionsError
from dagserve.http.hosts import check_host_entry
from dagserve.http.jsonio import MAX_DEPTH

__all__ = [
    "ADMIN_TOKEN_ENV",
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_SHUTDOWN_TIMEOUT_S",
    "TOKEN_ENV",
    "IngressConfig",
    "positive",
]

#: Environment variable holding the bearer token for graph routes.
TOKEN_ENV = "DAGSERVE_TOKEN"
#: Environment variable holding the bearer token for admin routes (which exist only with one).
ADMIN_TOKEN_ENV = "DAGSERVE_ADMIN_TOKEN"
#: Largest request body accepted (413 beyond), counted as it streams in.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
#: The whole body must arrive within this many seconds of the headers (408 otherwise).
DEFAULT_BODY_TIMEOUT_S = 30.0
#: A request's headers must arrive within this many seconds of its first byte (408 otherwise).
DEFAULT_HEADER_TIMEOUT_S = 10.0
#: Largest request head (request line and headers) accepted (431 beyond).
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
#: Graph requests running at once in one ingress; more get 503 with Retry-After.
DEFAULT_MAX_IN_FLIGHT = 1000
#: On SIGINT/SIGTERM, requests in flight get this many seconds to finish.
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class IngressConfig:
    """Limits and switches of one ingress (see :func:`asgi_app`)."""

    token: str | None = None
    admin_token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S
    max_in_flight: int | None = DEFAULT_MAX_IN_FLIGHT
    max_json_depth: int = MAX_DEPTH
    debug: bool = False
    title: str | None = None
    #: ``None``: any Host header; a tuple: loopback hosts and these names only (see HostFilter).
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.allowed_hosts is not None:
            for entry in self.allowed_hosts:
                check_host_entry(entry)
        positive("max_body_bytes", self.max_body_bytes, integer=True)
        positive("max_json_depth", self.max_json_depth, integer=True)
        if self.body_timeout_s is not None:
            positive("body_timeout_s", self.body_timeout_s)
        if self.max_in_flight is not None:
            positive("max_in_flight", self.max_in_flight, integer=True)


def positive(name: str, value: Any, *, integer: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or value <= 0:
        kind = "a positive integer" if integer else "a positive number of seconds"
        raise OptionsError(f"Ingress option {name}={value!r} is invalid; it must be {kind}.")
