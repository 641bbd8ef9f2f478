"""``dagserve run MODULE:ATTR``: deploy graphs and serve them over HTTP from the shell.

::

    dagserve run examples.quickstart:graph --backend ray --port 8000

``ATTR`` is a :class:`~dagserve.Graph` or a list of them. A progress display (on stderr) follows
the deployments as they come up; then one line on stdout gives the URL. Ctrl+C (SIGINT) or
SIGTERM stops gracefully: requests in flight finish (``--shutdown-timeout``), then the graphs
are torn down.

The admin routes (``dagserve status/scale/update``) need a token. On a loopback address without
one, ``dagserve run`` creates one and stores it for those commands in a file only this user can
read (see :func:`dagserve.http.admin.write_token_file`), removed when the server stops. On any other
address the token must be given (``--admin-token``); without one the admin routes are off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dagserve._errors import DagserveError
from dagserve.cli.config import check_config, config_option, read_config, with_server_config
from dagserve.cli.jobs import jobs_options, jobs_store_for
from dagserve.cli.targets import app_dir_option, load_graphs
from dagserve.deploy_config import parse_size
from dagserve.graph import Graph
from dagserve.http.admin import admin_token as configured_admin_token
from dagserve.http.admin import private_token_dir, remove_token_file, write_token_file
from dagserve.http.settings import (
    ADMIN_TOKEN_ENV,
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    TOKEN_ENV,
)
from dagserve.http.hosts import is_loopback
from dagserve.http.server import serve
from dagserve.cli.output import LoggedProgress, Say, json_handlers
from dagserve.observe.logs import LOG_FORMATS, JsonFormatter, TextFormatter, TraceIdFilter
from dagserve.runtime.request_id import RequestIdFilter
from dagserve.runtime.tracing import OTLP_ENDPOINT_ENV

if TYPE_CHECKING:
    from rich.console import Console

    from dagserve.app import App, AppGroup
    from dagserve.http.settings import ServerOptions
    from dagserve.backends import Backend
    from dagserve.deploy_config import DeployConfig
    from dagserve.jobs import JobSettings

__all__ = ["parse_size", "run_command"]

_log = logging.getLogger("dagserve.run")

class _Size(click.ParamType):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            size = parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if size <= 0:
            self.fail(f"{value!r} must be more than 0 bytes.", param, ctx)
        return size


@click.command("run")
@click.argument("target", metavar="MODULE:ATTR")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for every interface)."
)
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port; 0 picks a free one."
)
@click.option(
    "--grpc-port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Also serve the Open Inference Protocol over gRPC on this port (0 picks a free one) [default: off].",
)
@click.option("--backend", type=click.Choice(["local", "ray"]), default=None, help="Where nodes run: ray (one Serve deployment per node) or local (in-process) [default: ray].")
@click.option("--address", default=None, help="Ray cluster address (passed to the backend as address=).")
@click.option(
    "--allow-unauthenticated-ray",
    is_flag=True,
    help="Start a local Ray even when RAY_AUTH_MODE turns its token auth off (refused otherwise; the "
    "Ray backend also reads DAGSERVE_ALLOW_UNAUTHENTICATED_RAY=1).",
)
@click.option(
    "--token", envvar=TOKEN_ENV, default=None, help=f"Bearer token required by graph routes [env {TOKEN_ENV}]."
)
@click.option(
    "--admin-token",
    envvar=ADMIN_TOKEN_ENV,
    default=None,
    help=f"Bearer token of the admin routes [env {ADMIN_TOKEN_ENV}; on loopback, default: a new one, stored "
    "for dagserve status/scale/update].",
)
@click.option("--no-admin", is_flag=True, help="Serve without the admin routes (and create no admin token).")
@click.option(
    "--max-body-size",
    type=_Size(),
    default=DEFAULT_MAX_BODY_BYTES,
    show_default=True,
    help="Largest request body (413 beyond).",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_IN_FLIGHT,
    show_default=True,
    help="Graph requests at once (503 beyond).",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_BODY_TIMEOUT_S,
    show_default=True,
    help="Seconds for a request body to arrive (408).",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_HEADER_TIMEOUT_S,
    show_default=True,
    help="Seconds for request headers to arrive (408).",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a graph run may take (504) [default: 60].",
)
@click.option(
    "--stream-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a whole stream of a streaming graph may take; --request-timeout bounds its first "
    "item (docs/streaming.md) [default: 600].",
)
@click.option(
    "--ready-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds for deployments to come up [default: 120].",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_SHUTDOWN_TIMEOUT_S,
    show_default=True,
    help="Seconds in-flight requests get on SIGINT/SIGTERM.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer requests whose Host header is NAME (repeatable; *.example.com, * for any). "
    "On loopback without a token only localhost, 127.0.0.1 and [::1] are answered otherwise.",
)
@click.option("--debug", is_flag=True, help="Put tracebacks in error bodies (never in production).")
@config_option
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log one line per request.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log level of dagserve and uvicorn.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="json: every dagserve log record as one JSON object per line, with request_id and trace_id, "
    "and one dagserve.access record per request (status, duration, per-node times).",
)
@app_dir_option
@click.option(
    "--otlp-endpoint",
    envvar=OTLP_ENDPOINT_ENV,
    default=None,
    metavar="URL",
    help=f"Export OpenTelemetry traces over OTLP/HTTP to URL, e.g. http://127.0.0.1:4318 [env {OTLP_ENDPOINT_ENV}, "
    "else OTEL_EXPORTER_OTLP_ENDPOINT; default: off]. Needs pip install 'dagserve[otel]'.",
)
@jobs_options
def run_command(target: str, **options: Any) -> None:
    """Serve the graph(s) at MODULE:ATTR over HTTP (e.g. examples.quickstart:graph).

    ATTR is a dagserve.Graph or a list of Graphs. One graph answers POST /; several answer
    POST /<name>. GET /docs shows the API; GET /-/ready says when every deployment is up.
    """
    if options["address"] and options["backend"] not in (None, "ray"):
        raise click.BadParameter(
            "--address is a Ray cluster's address; use it with --backend ray.", param_hint="--address"
        )
    if options["allow_unauthenticated_ray"] and options["backend"] not in (None, "ray"):
        raise click.BadParameter(
            "--allow-unauthenticated-ray is about the Ray dagserve starts; use it with --backend ray.",
            param_hint="--allow-unauthenticated-ray",
        )
    # Code < config file < flags (the file's server settings replace defaults, not flags given).
    config = read_config(options.pop("config_file"))
    options = with_server_config(click.get_current_context(), options, config)
    # Before importing or deploying anything: a refusal costs nothing, and nothing ever binds.
    say = Say(options["log_format"] == "json")
    options["admin_token"], created = _admin_token(options["host"], options["admin_token"], options.pop("no_admin"), say)
    endpoint = options.pop("otlp_endpoint")
    if endpoint:  # for the ingress and, read when the graphs deploy, for the Ray replicas
        os.environ[OTLP_ENDPOINT_ENV] = endpoint
    options["jobs_store"], options["jobs"] = jobs_store_for(options, options["host"], options["port"], say)
    graphs = load_graphs(target, options.pop("app_dir"))
    check_config(config, graphs)  # every graph compiles with the file's node options
    server = server_options(options)  # before deploying: a refusal costs nothing
    with _logging_to_stderr(server.log_level, server.log_format):
        try:
            _run(graphs, server, stored_admin_token=created, config=config, say=say, **options)
        except click.ClickException as exc:
            if not say.json:
                raise
            say(exc.format_message(), level=logging.ERROR)  # the last line is a JSON record too
            raise SystemExit(exc.exit_code) from None


def _admin_token(host: str, given: str | None, no_admin: bool, say: Say) -> tuple[str, bool]:
    """The admin token to serve with ("" for no admin routes), and whether it was created here."""
    token = configured_admin_token(given)
    if no_admin:
        if token:
            raise click.UsageError(
                "--no-admin turns the admin routes off, but an admin token is given (--admin-token or "
                f"${ADMIN_TOKEN_ENV}); drop one of them."
            )
        return "", False
    if token:
        return token, False
    if not is_loopback(host):
        # A token created here would only be readable on this machine; elsewhere it must be chosen.
        say(
            f"dagserve: serving on {host} without admin routes; to scale or update from another machine, "
            f"pass --admin-token or set ${ADMIN_TOKEN_ENV} (and give the same to dagserve status/scale/update "
            "with --token).",
            level=logging.WARNING,
        )
        return "", False
    try:
        private_token_dir()  # where the token will be stored: checked now, written once the port is bound
    except DagserveError as exc:
        raise click.ClickException(str(exc)) from None
    return secrets.token_urlsafe(32), True


def server_options(options: dict[str, Any]) -> ServerOptions:
    """The server's options, built once from ``dagserve run``'s merged settings (flags over the
    config file's ``server:`` section over the defaults; tokens also from the environment); the
    keys it takes are removed from ``options``."""
    from dagserve.http.settings import ServerOptions

    take = {flag: options.pop(flag) for flag in _SERVER_FLAGS}
    try:
        return ServerOptions.build(
            host=take["host"],
            port=take["port"],
            token=take["token"],
            admin_token=take["admin_token"],
            max_body_bytes=take["max_body_size"],
            body_timeout_s=take["body_timeout"],
            max_in_flight=take["max_in_flight"],
            debug=take["debug"],
            allowed_hosts=take["allowed_hosts"],
            header_timeout_s=take["header_timeout"],
            shutdown_timeout_s=take["shutdown_timeout"],
            access_log=take["access_log"],
            log_level=take["log_level"],
            log_format=take["log_format"],
            grpc_port=take["grpc_port"],
        )
    except DagserveError as exc:
        raise click.UsageError(str(exc)) from None


#: ``dagserve run``'s settings that make its :class:`~dagserve.http.settings.ServerOptions`.
_SERVER_FLAGS = (
    "host", "port", "token", "admin_token", "max_body_size", "body_timeout", "max_in_flight", "debug",
    "allowed_hosts", "header_timeout", "shutdown_timeout", "access_log", "log_level", "log_format", "grpc_port",
)


def _run(
    graphs: list[Graph],
    server: ServerOptions,
    *,
    backend: str | None,
    address: str | None,
    allow_unauthenticated_ray: bool,
    request_timeout: float | None,
    ready_timeout: float | None,
    stream_timeout: float | None = None,
    stored_admin_token: bool = False,
    config: DeployConfig | None = None,
    say: Say | None = None,
    jobs_store: str | None = None,
    jobs: JobSettings | None = None,
) -> None:
    from rich.console import Console

    say = say or Say(server.log_format == "json")
    console = Console(stderr=True)
    backend_options: dict[str, Any] = {"address": address} if address else {}
    if allow_unauthenticated_ray:
        backend_options["allow_unauthenticated_ray"] = True
    timeouts = {"request_timeout_s": request_timeout, "ready_timeout_s": ready_timeout, "stream_timeout_s": stream_timeout}
    deploy_options: dict[str, Any] = {k: v for k, v in timeouts.items() if v is not None}
    deploy_options.update(jobs_store=jobs_store, jobs=jobs)  # docs/jobs.md
    try:
        apps = _deploy_all(graphs, backend, backend_options, deploy_options, console, config, say.json)
    except DagserveError as exc:
        raise click.ClickException(str(exc)) from None
    served = [graph for app in apps for graph in (list(app.graphs.values()) or [app])]  # a group: each graph
    names = ", ".join(a.name for a in served)
    admin_token = server.ingress.admin_token
    token_file: list[Path] = []

    def announce(url: str) -> None:
        if stored_admin_token and admin_token:
            # Written once the port is known (--port 0), before the URL line a client waits for.
            path = write_token_file(server.host, urllib.parse.urlsplit(url).port or server.port, admin_token)
            token_file.append(path)
            say(f"dagserve: admin token for dagserve status/scale/update in {path} (removed on exit)")
        routes = url if len(served) == 1 else ", ".join(f"{url}{a.name}" for a in served)
        models = sorted({g.openai.model for g in graphs if g.openai is not None})
        if models:  # the OpenAI-compatible routes (docs/openai.md)
            say(f"dagserve: OpenAI models {', '.join(models)} at {url}v1")
        pages = f"API docs: {url}docs; dashboard: {url}-/dashboard"
        say(f"dagserve: serving {names} at {routes}  ({pages}; Ctrl+C to stop)", stdout=True, url=url)

    try:
        serve(apps, options=server, on_ready=announce)
    except DagserveError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        for path in token_file:
            remove_token_file(path, admin_token or "")
        for app in reversed(apps):
            app.shutdown()
    say("dagserve: stopped.")


@contextlib.contextmanager
def _logging_to_stderr(level: str, log_format: str = "text") -> Iterator[None]:
    """Log records to stderr while serving, each line with the request id it belongs to (as JSON
    objects with the trace id too, for ``json``)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.addFilter(TraceIdFilter())
        handler.setFormatter(JsonFormatter())
        logging.captureWarnings(True)  # warnings.warn's lines are records too
        json_handlers()
    else:
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level.upper())
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        if log_format == "json":
            logging.captureWarnings(False)


def _deploy_all(
    graphs: list[Graph],
    backend: str | None,
    backend_options: dict[str, Any],
    deploy_options: dict[str, Any],
    console: Console,
    config: DeployConfig | None = None,
    json_lines: bool = False,
) -> list[App | AppGroup]:
    """Deploy the graphs together, as ``dagserve.deploy([...])`` does (a node several graphs use
    runs once), showing how many of their nodes run so far (as log records with ``json_lines``:
    a progress display is no JSON); one App per graph served."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from dagserve._options import DEFAULT_BACKEND
    from dagserve.app import deploy
    from dagserve.backends import get_backend

    if json_lines and (backend or DEFAULT_BACKEND) == "ray":
        # Ray and Serve give their loggers handlers of their own when imported: turn those to JSON
        # before anything logs through them (json_handlers).
        import ray.serve  # noqa: F401

        json_handlers()
    names = ", ".join(g.name for g in graphs)
    display = (
        LoggedProgress(_log)
        if json_lines
        else Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console)
    )
    with display as progress:
        task = progress.add_task(f"deploying {names}", total=1)
        be = get_backend(backend or DEFAULT_BACKEND, **backend_options)
        done = threading.Event()
        # Deploy on the main thread (Ray wants it); watch the backend from a side thread.
        watcher = threading.Thread(
            target=_watch, args=(be, names, progress, task, done), name="dagserve-deploy-progress", daemon=True
        )
        watcher.start()
        try:
            chosen = config and config.for_graph(*(g.name for g in graphs))
            app = deploy(graphs[0] if len(graphs) == 1 else graphs, be, config=chosen, **deploy_options)
        finally:
            done.set()
            watcher.join(2)
        progress.update(task, description=f"[green]ready[/] {names}: {_count(be)}", completed=1)
    if json_lines:
        json_handlers()  # loggers the backend set up on its own (Ray's) write JSON too
    return [app]


def _count(be: Backend) -> str:
    try:
        nodes = be.status().nodes.values()
    except Exception:  # a backend that cannot report while deploying
        return "starting"
    running = sum(1 for n in nodes if n.state == "RUNNING" and n.running_replicas >= n.target_replicas)
    text = f"{running}/{len(nodes)} nodes running"
    pending = [
        f"{n.name} {n.running_replicas} of {n.target_replicas} replicas, {n.pending_replicas} pending "
        f"({n.pending_reason or 'starting'})"
        for n in nodes
        if n.pending_replicas
    ]
    return text + ("; " + "; ".join(pending) if pending else "")


def _watch(be: Backend, name: str, progress: Any, task: Any, done: threading.Event) -> None:
    while not done.wait(0.5):
        progress.update(task, description=f"deploying {name}: {_count(be)}")
