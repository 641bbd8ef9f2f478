"""``dagserve jobs list|show ID|cancel ID``: a running server's queued jobs; and the ``--jobs-*``
options of ``dagserve run`` (docs/jobs.md).

The commands talk to the job routes (:mod:`dagserve.http.job_routes`) over HTTP with the graph
routes' token (``--token`` or ``$DAGSERVE_TOKEN``; none for a loopback server started without
one)::

    dagserve jobs list --status queued
    dagserve jobs show k3Jb...
    dagserve jobs cancel k3Jb...

Standard library HTTP (``urllib``) only.
"""

from __future__ import annotations

import datetime
import json
import functools
import os
import urllib.error
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import click

from dagserve.cli.ops import DEFAULT_URL, URL_ENV, base_url, request_json
from dagserve.http.settings import TOKEN_ENV
from dagserve.jobs import STATUSES, JobSettings, default_db_path
from dagserve.jobs.record import DEFAULT_LEASE_S, DEFAULT_MAX_ATTEMPTS, DEFAULT_TTL_S

__all__ = ["jobs_command", "jobs_options", "jobs_store_for"]

F = TypeVar("F", bound=Callable[..., Any])


# -- dagserve run's options --------------------------------------------------------------------------
def jobs_options(command: F) -> F:
    """Add ``--jobs-db``, ``--jobs-store``, ``--jobs-ttl``, ``--jobs-max-attempts``,
    ``--jobs-concurrency`` and ``--jobs-lease`` to ``command``."""
    options = [
        click.option("--jobs-db", type=click.Path(dir_okay=False), default=None, metavar="PATH",
                     help="SQLite file of the job queue [default: $XDG_STATE_HOME/dagserve/jobs-HOST-PORT.sqlite3, "
                     "i.e. ~/.local/state/dagserve/...; in memory with --port 0]."),
        click.option("--jobs-store", default=None, metavar="redis://HOST:PORT/DB",
                     help="Keep the job queue in Redis, shared by several servers (needs dagserve[redis])."),
        click.option("--jobs-ttl", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TTL_S, show_default=True,
                     help="Seconds a finished job's result is kept."),
        click.option("--jobs-max-attempts", type=click.IntRange(min=1), default=DEFAULT_MAX_ATTEMPTS, show_default=True,
                     help="Runs of a job whose server died before it fails for good."),
        click.option("--jobs-concurrency", type=click.IntRange(min=1), default=None,
                     help="Jobs this server runs at once [default: half of what the graph's smallest node takes]."),
        click.option("--jobs-lease", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_LEASE_S,
                     show_default=True, help="Seconds before another server (Redis) takes over a dead server's jobs."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def jobs_store_for(
    options: dict[str, Any], host: str, port: int, say: Callable[[str], None] = functools.partial(click.echo, err=True)
) -> tuple[str | None, JobSettings]:
    """Pop the ``--jobs-*`` options: (the store for ``deploy(jobs_store=)``, the settings); ``say``
    tells the user where jobs are kept when that is not where they might think."""
    db, store = options.pop("jobs_db"), options.pop("jobs_store")
    settings = JobSettings(
        ttl_s=options.pop("jobs_ttl"), max_attempts=options.pop("jobs_max_attempts"),
        concurrency=options.pop("jobs_concurrency"), lease_s=options.pop("jobs_lease"),
    )
    if db and store:
        raise click.UsageError("Give --jobs-db (a SQLite file) or --jobs-store (Redis), not both.")
    if store:
        if not store.startswith(("redis://", "rediss://", "unix://")):
            raise click.BadParameter(f"{store!r} is not a redis:// URL, e.g. redis://127.0.0.1:6379/0.",
                                     param_hint="--jobs-store")
        return store, settings
    if db:
        return os.path.expanduser(db), settings
    if port == 0:
        say("dagserve: jobs are kept in memory (--port 0 has no state file of its own; pass --jobs-db PATH).")
        return None, settings
    return str(default_db_path(host, port)), settings


# -- dagserve jobs -----------------------------------------------------------------------------------
class JobsClient:
    """A tiny client for the job routes; errors become :class:`click.ClickException`."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = base_url(url)
        self.token = token

    def request(self, method: str, path: str) -> Any:
        return request_json(method, self.url + path, self.token, _explain)

    def job(self, method: str, job_id: str) -> Any:
        return self.request(method, "/-/jobs/" + urllib.parse.quote(job_id, safe=""))


def _explain(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read()).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    message = error.get("message") if isinstance(error, dict) else None
    if exc.code == 401:
        return f"The server refused the request: {message or 'no token'} Pass --token or set ${TOKEN_ENV}."
    if exc.code == 404 and not message:
        return "This server has no job routes (a dagserve older than jobs?)."
    return message or f"HTTP {exc.code}: {exc.reason}"


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.datetime.fromtimestamp(value).strftime("%m-%d %H:%M:%S")


def _print_table(jobs: list[dict[str, Any]], next_id: str | None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, caption="tries: attempts; times: local, month-day", caption_justify="left")
    for column in ("id", "graph", "status", "tries", "created", "error"):
        wide = column in ("id", "status")  # an id is copied whole; a status is one word
        table.add_column(column, no_wrap=wide, min_width=24 if column == "id" else 9 if column == "status" else None,
                         overflow="fold")
    colours = {"failed": "red", "cancelled": "yellow", "running": "cyan", "succeeded": "green"}
    for job in jobs:
        status = job["status"]
        error = job.get("error") or {}
        table.add_row(
            job["id"], job["graph"], f"[{colours[status]}]{status}[/]" if status in colours else status,
            str(job["attempts"]), _when(job.get("created")),
            f"{error.get('type')}: {error.get('message')}" if error else "",
        )
    console = Console()
    console.print(table if jobs else "No jobs.")
    if next_id:
        console.print(f"More: dagserve jobs list --after {next_id}", markup=False, highlight=False)


_url_option = click.option(
    "--url", envvar=URL_ENV, default=DEFAULT_URL, show_default=True, help=f"The server's base URL (or ${URL_ENV})."
)
_token_option = click.option("--token", envvar=TOKEN_ENV, default=None, help=f"The graph routes' token [env {TOKEN_ENV}].")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")


@click.group("jobs")
def jobs_command() -> None:
    """A running server's queued jobs: list them, show one, cancel one (docs/jobs.md)."""


@jobs_command.command("list")
@click.option("--graph", default=None, help="Only this graph's jobs.")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Jobs per page.")
@click.option("--after", default=None, metavar="ID", help="Start after this job (the next page).")
@_url_option
@_token_option
@_json_option
def list_command(graph: str | None, status: str | None, limit: int, after: str | None, url: str, token: str | None,
                 as_json: bool) -> None:
    """List jobs in the order they were submitted."""
    query = {k: v for k, v in {"graph": graph, "status": status, "limit": limit, "after": after}.items() if v is not None}
    data = JobsClient(url, token).request("GET", "/-/jobs?" + urllib.parse.urlencode(query))
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_table(data["jobs"], data.get("next"))


@jobs_command.command("show")
@click.argument("job_id", metavar="ID")
@_url_option
@_token_option
def show_command(job_id: str, url: str, token: str | None) -> None:
    """Print job ID as JSON: its status, attempts, times, and result or error."""
    click.echo(json.dumps(JobsClient(url, token).job("GET", job_id), indent=2))


@jobs_command.command("cancel")
@click.argument("job_id", metavar="ID")
@_url_option
@_token_option
def cancel_command(job_id: str, url: str, token: str | None) -> None:
    """Cancel job ID if it is queued or running (a running job stops as if its client hung up)."""
    data = JobsClient(url, token).job("DELETE", job_id)
    click.echo(f"Job {data['id']} is {data['status']}.")
