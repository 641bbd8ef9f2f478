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
from dagserve.cli.targets import load_graphs
from dagserve.deploy_config import parse_size
from dagserve.graph import Graph
from dagserve.http.admin import admin_token as configured_admin_token
from dagserve.http.admin import private_token_dir, remove_token_file, write_token_file
from dagserve.http.config import (
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
from dagserve.observe.logs import LOG_FORMATS, JsonFormatter, TraceIdFilter
from dagserve.runtime.request_id import RequestIdFilter
from dagserve.runtime.tracing import OTLP_ENDPOINT_ENV

if TYPE_CHECKING:
    from rich.console import Console

    from dagserve.app import App
    from dagserve.backends import Backend
    from dagserve.deploy_config import DeployConfig
    from dagserve.jobs import JobSettings

__all__ = ["parse_size", "run_command"]

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
    options["admin_token"], created = _admin_token(options["host"], options["admin_token"], options.pop("no_admin"))
    endpoint = options.pop("otlp_endpoint")
    if endpoint:  # for the ingress and, read when the graphs deploy, for the Ray replicas
        os.environ[OTLP_ENDPOINT_ENV] = endpoint
    options["jobs_store"], options["jobs"] = jobs_store_for(options, options["host"], options["port"])
    graphs = load_graphs(target)
    check_config(config, graphs)  # every graph compiles with the file's node options
    with _logging_to_stderr(options["log_level"], options["log_format"]):
        _run(graphs, stored_admin_token=created, config=config, **options)


def _admin_token(host: str, given: str | None, no_admin: bool) -> tuple[str, bool]:
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
        click.echo(
            f"dagserve: serving on {host} without admin routes; to scale or update from another machine, "
            f"pass --admin-token or set ${ADMIN_TOKEN_ENV} (and give the same to dagserve status/scale/update "
            "with --token).",
            err=True,
        )
        return "", False
    try:
        private_token_dir()  # where the token will be stored: checked now, written once the port is bound
    except DagserveError as exc:
        raise click.ClickException(str(exc)) from None
    return secrets.token_urlsafe(32), True


def _run(
    graphs: list[Graph],
    *,
    host: str,
    port: int,
    backend: str | None,
    address: str | None,
    allow_unauthenticated_ray: bool,
    token: str | None,
    admin_token: str | None,
    max_body_size: int,
    max_in_flight: int,
    body_timeout: float,
    header_timeout: float,
    request_timeout: float | None,
    ready_timeout: float | None,
    shutdown_timeout: float,
    stream_timeout: float | None = None,
    allowed_hosts: tuple[str, ...],
    debug: bool,
    access_log: bool,
    log_level: str,
    log_format: str = "text",
    stored_admin_token: bool = False,
    config: DeployConfig | None = None,
    jobs_store: str | None = None,
    jobs: JobSettings | None = None,
) -> None:
    from rich.console import Console

    console = Console(stderr=True)
    backend_options: dict[str, Any] = {"address": address} if address else {}
    if allow_unauthenticated_ray:
        backend_options["allow_unauthenticated_ray"] = True
    timeouts = {"request_timeout_s": request_timeout, "ready_timeout_s": ready_timeout, "stream_timeout_s": stream_timeout}
    deploy_options: dict[str, Any] = {k: v for k, v in timeouts.items() if v is not None}
    deploy_options.update(jobs_store=jobs_store, jobs=jobs)  # docs/jobs.md
    try:
        apps = _deploy_all(graphs, backend, backend_options, deploy_options, console, config)
    except DagserveError as exc:
        raise click.ClickException(str(exc)) from None
    names = ", ".join(a.name for a in apps)
    token_file: list[Path] = []

    def announce(url: str) -> None:
        if stored_admin_token and admin_token:
            # Written once the port is known (--port 0), before the URL line a client waits for.
            path = write_token_file(host, urllib.parse.urlsplit(url).port or port, admin_token)
            token_file.append(path)
            click.echo(f"dagserve: admin token for dagserve status/scale/update in {path} (removed on exit)", err=True)
        routes = url if len(apps) == 1 else ", ".join(f"{url}{a.name}" for a in apps)
        click.echo(f"dagserve: serving {names} at {routes}  (API docs: {url}docs; Ctrl+C to stop)")

    try:
        serve(
            apps,
            host=host,
            port=port,
            token=token,
            admin_token=admin_token,
            max_body_bytes=max_body_size,
            body_timeout_s=body_timeout,
            header_timeout_s=header_timeout,
            max_in_flight=max_in_flight,
            shutdown_timeout_s=shutdown_timeout,
            allowed_hosts=allowed_hosts,
            debug=debug,
            access_log=access_log,
            log_level=log_level,
            log_format=log_format,
            on_ready=announce,
        )
    except DagserveError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        for path in token_file:
            remove_token_file(path, admin_token or "")
        for app in reversed(apps):
            app.shutdown()
    click.echo("dagserve: stopped.", err=True)


@contextlib.contextmanager
def _logging_to_stderr(level: str, log_format: str = "text") -> Iterator[None]:
    """Log records to stderr while serving, each line with the request id it belongs to (as JSON
    objects with the trace id too, for ``json``)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.addFilter(TraceIdFilter())
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level.upper())
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def _deploy_all(
    graphs: list[Graph],
    backend: str | None,
    backend_options: dict[str, Any],
    deploy_options: dict[str, Any],
    console: Console,
    config: DeployConfig | None = None,
) -> list[App]:
    """Deploy each graph, showing per graph how many of its nodes run so far."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from dagserve._options import DEFAULT_BACKEND
    from dagserve.app import deploy
    from dagserve.backends import get_backend

    apps: list[App] = []
    try:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as progress:
            for graph in graphs:
                task = progress.add_task(f"deploying {graph.name}", total=1)
                be = get_backend(backend or DEFAULT_BACKEND, **backend_options)
                done = threading.Event()
                # Deploy on the main thread (Ray wants it); watch the backend from a side thread.
                watcher = threading.Thread(
                    target=_watch,
                    args=(be, graph.name, progress, task, done),
                    name="dagserve-deploy-progress",
                    daemon=True,
                )
                watcher.start()
                try:
                    app = deploy(graph, be, config=config and config.for_graph(graph.name), **deploy_options)
                finally:
                    done.set()
                    watcher.join(2)
                apps.append(app)
                progress.update(task, description=f"[green]ready[/] {graph.name}: {_count(be)}", completed=1)
    except BaseException:
        for app in reversed(apps):
            app.shutdown()
        raise
    return apps


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
