"""One ingress's limits and switches (:class:`IngressConfig`), one server's options as one value
(:class:`ServerOptions`), the server defaults, and the ``server:`` section of a config file
(:class:`ServerConfig`).

Read by the ingress (``dagserve.http.ingress``) and set by ``asgi_app`` / ``serve``
(``dagserve.http.server``); kept apart so that neither imports the other.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dagserve._errors import OptionsError
from dagserve.deploy_config import DeployConfig, parse_size, suggest
from dagserve.http.hosts import check_host_entry, served_hosts
from dagserve.http.jsonio import MAX_DEPTH
from dagserve.observe.logs import LOG_FORMATS

__all__ = [
    "ADMIN_TOKEN_ENV",
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_FORM_FIELD_BYTES",
    "DEFAULT_MAX_FORM_PARTS",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_SHUTDOWN_TIMEOUT_S",
    "TOKEN_ENV",
    "IngressConfig",
    "ServerConfig",
    "ServerOptions",
    "positive",
    "server_config",
]

#: Environment variable holding the bearer token for graph routes.
TOKEN_ENV = "DAGSERVE_TOKEN"
#: Environment variable holding the bearer token for admin routes (which exist only with one).
ADMIN_TOKEN_ENV = "DAGSERVE_ADMIN_TOKEN"
#: Largest request body accepted (413 beyond), counted as it streams in.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
#: Most parts (files and fields) one multipart/form-data body may have (413 beyond).
DEFAULT_MAX_FORM_PARTS = 1000
#: Largest form field (a multipart part that is not a file field) accepted (413 beyond).
DEFAULT_MAX_FORM_FIELD_BYTES = 1024 * 1024
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
    max_form_parts: int = DEFAULT_MAX_FORM_PARTS
    max_form_field_bytes: int = DEFAULT_MAX_FORM_FIELD_BYTES
    debug: bool = False
    title: str | None = None
    #: ``None``: any Host header; a tuple: loopback hosts and these names only (see HostFilter).
    allowed_hosts: tuple[str, ...] | None = None
    #: Served by dagserve itself (``serve``): the dashboard opens on this machine without a token
    #: when graph routes need none, and takes the request token too. ``False`` (``asgi_app``): the
    #: admin routes' rules (http/dashboard.py).
    local_dashboard: bool = False

    def __post_init__(self) -> None:
        if self.allowed_hosts is not None:
            for entry in self.allowed_hosts:
                check_host_entry(entry)
        positive("max_body_bytes", self.max_body_bytes, integer=True)
        positive("max_json_depth", self.max_json_depth, integer=True)
        positive("max_form_parts", self.max_form_parts, integer=True)
        positive("max_form_field_bytes", self.max_form_field_bytes, integer=True)
        if self.body_timeout_s is not None:
            positive("body_timeout_s", self.body_timeout_s)
        if self.max_in_flight is not None:
            positive("max_in_flight", self.max_in_flight, integer=True)


@dataclass(frozen=True)
class ServerOptions:
    """How one server serves: where it listens, how long a client may take to send a request's
    head and how large it may be, how long requests in flight get at shutdown, what it logs, and
    its ingress's limits (:class:`IngressConfig`).

    Built once, by :meth:`build` from the options as ``dagserve.serve`` and ``dagserve run`` name
    them (the CLI after merging its flags, the environment and a config file's ``server:``
    section), and passed down whole: to the ingress (``ingress``) and to the uvicorn server
    (``http/connections.py``).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    ingress: IngressConfig = field(default_factory=IngressConfig)
    header_timeout_s: float | None = DEFAULT_HEADER_TIMEOUT_S
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    access_log: bool = False
    log_level: str = "info"
    log_format: str = "text"
    #: Also serve the Open Inference Protocol over gRPC at this port on ``host`` (``0`` picks one;
    #: ``None``: no gRPC; docs/protocols.md).
    grpc_port: int | None = None

    def __post_init__(self) -> None:
        if self.header_timeout_s is not None:
            positive("header_timeout_s", self.header_timeout_s)
        positive("max_header_bytes", self.max_header_bytes, integer=True)
        value = self.shutdown_timeout_s
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise OptionsError(f"Server option shutdown_timeout_s={value!r} is invalid; it must be >= 0 seconds.")
        if self.log_format not in LOG_FORMATS:
            raise OptionsError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}.")

    @classmethod
    def build(
        cls,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        token: str | None = None,
        admin_token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S,
        max_in_flight: int | None = DEFAULT_MAX_IN_FLIGHT,
        debug: bool = False,
        allowed_hosts: Iterable[str] | None = None,
        title: str | None = None,
        **server: Any,
    ) -> ServerOptions:
        """The options of a server bound to ``host``: ``token`` and ``admin_token`` default to
        ``$DAGSERVE_TOKEN`` and ``$DAGSERVE_ADMIN_TOKEN``; bound to loopback without a token, it
        answers only loopback ``Host`` names and ``allowed_hosts`` (web pages cannot reach it
        through DNS rebinding); ``server`` holds the other fields."""
        token = resolve_token(token, TOKEN_ENV)
        ingress = IngressConfig(
            token=token,
            admin_token=resolve_token(admin_token, ADMIN_TOKEN_ENV),
            max_body_bytes=max_body_bytes,
            body_timeout_s=body_timeout_s,
            max_in_flight=max_in_flight,
            debug=debug,
            title=title,
            allowed_hosts=served_hosts(host, token, allowed_hosts),
            local_dashboard=True,  # a server dagserve binds itself (http/dashboard.py says what that allows)
        )
        return cls(host=host, port=port, ingress=ingress, **server)


def resolve_token(token: str | None, env: str) -> str | None:
    """``token``, else the environment variable ``env``; empty means none."""
    if token is None:
        token = os.environ.get(env)
    return token or None


def positive(name: str, value: Any, *, integer: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or value <= 0:
        kind = "a positive integer" if integer else "a positive number of seconds"
        raise OptionsError(f"Ingress option {name}={value!r} is invalid; it must be {kind}.")


class ServerConfig(BaseModel):
    """A config file's ``server:`` section: ``dagserve run``'s settings, named as its flags
    (``--max-body-size`` is ``max_body_size``). Only the settings written are set; the command
    line overrides them, and they override the defaults. Tokens never go in a file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str | None = None
    port: int | None = Field(None, ge=0, le=65535)
    grpc_port: int | None = Field(None, ge=0, le=65535)
    max_body_size: int | None = Field(None, gt=0, description="bytes, or a size such as 1MiB")
    max_in_flight: int | None = Field(None, ge=1)
    body_timeout: float | None = Field(None, gt=0)
    header_timeout: float | None = Field(None, gt=0)
    request_timeout: float | None = Field(None, gt=0)
    ready_timeout: float | None = Field(None, gt=0)
    shutdown_timeout: float | None = Field(None, ge=0)
    allowed_hosts: tuple[str, ...] | None = None
    debug: bool | None = None
    access_log: bool | None = None
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    log_format: Literal["text", "json"] | None = None
    stream_timeout: float | None = Field(None, gt=0)
    #: Where OpenTelemetry traces go (OTLP/HTTP, e.g. http://otel-collector:4318); docs/tracing.md.
    otlp_endpoint: str | None = None
    #: The job queue (docs/jobs.md): a SQLite file, or a redis:// URL, and how jobs run.
    jobs_db: str | None = None
    jobs_store: str | None = None
    jobs_ttl: float | None = Field(None, gt=0)
    jobs_max_attempts: int | None = Field(None, ge=1)
    jobs_concurrency: int | None = Field(None, ge=1)
    jobs_lease: float | None = Field(None, gt=0)

    @field_validator("max_body_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    def given(self) -> dict[str, Any]:
        """The settings the file sets."""
        return self.model_dump(exclude_unset=True)


#: Settings that a config file must not hold in plain text, and where they go instead.
_SECRETS = {"token": TOKEN_ENV, "admin_token": ADMIN_TOKEN_ENV}


def server_config(config: DeployConfig) -> ServerConfig:
    """The config's ``server:`` section, validated (with the ingress's own checks too)."""
    where = f"{config.where()}: server"
    fields = sorted(ServerConfig.model_fields)
    for key in config.server:
        if key in _SECRETS:
            raise OptionsError(
                f"{where}: {key} does not belong in a config file (it would sit there in plain text); set "
                f"${_SECRETS[key]} in the server's environment instead."
            )
        if key not in fields:
            raise OptionsError(f"{where}: unknown setting {key!r}.{suggest(str(key), fields)} Valid: {', '.join(fields)}.")
    try:
        server = ServerConfig(**config.server)
    except (ValidationError, ValueError) as exc:
        raise OptionsError(f"{where}: {_first_error(exc)}") from None
    try:
        IngressConfig(
            max_body_bytes=server.max_body_size or DEFAULT_MAX_BODY_BYTES,
            max_in_flight=server.max_in_flight or DEFAULT_MAX_IN_FLIGHT,
            allowed_hosts=server.allowed_hosts,
        )
    except OptionsError as exc:
        raise OptionsError(f"{where}: {exc}") from None
    return server


def _first_error(exc: Exception) -> str:
    if not isinstance(exc, ValidationError):
        return str(exc)
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"][:1])
    return f"{loc}={first.get('input')!r}: {first['msg'].removeprefix('Value error, ').rstrip('.')}."
