"""``dagserve status``, ``dagserve scale`` and ``dagserve update``: operate a running server.

They talk to the server's admin routes (:mod:`dagserve.http.admin`) over HTTP, so the server must
have been started with an admin token. A ``dagserve run`` on 127.0.0.1 without one creates one
and stores it where these commands find it, so on the same machine nothing needs passing.
Otherwise pass the server's token with ``--token`` or (better, it stays out of the process list)
``DAGSERVE_ADMIN_TOKEN``; an explicit token always wins over the stored one::

    export DAGSERVE_ADMIN_TOKEN=s3cret
    dagserve status --url http://127.0.0.1:8000
    dagserve scale reviews Sentiment --replicas 4
    dagserve update reviews Toxicity --max-batch-size 32 --batch-wait-ms 5

Standard library HTTP (``urllib``) only: the CLI needs no extra client package.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import click

from dagserve.cli.output import console as cli_console
from dagserve.http.admin import ADMIN_PREFIX, TokenFileError, token_dir, token_for_url
from dagserve.http.settings import ADMIN_TOKEN_ENV

__all__ = ["AdminClient", "admin_client", "base_url", "request_json", "scale_command", "status_command", "update_command"]

URL_ENV = "DAGSERVE_URL"
DEFAULT_URL = "http://127.0.0.1:8000"


class AdminClient:
    """A tiny client for the admin routes; errors become :class:`click.ClickException` with a fix."""

    def __init__(self, url: str, token: str | None, *, timeout_s: float = 30.0) -> None:
        self.url = base_url(url)
        self.timeout_s = timeout_s
        self.stored = False  # the token came from the file a loopback `dagserve run` wrote
        if not token:
            try:
                token = token_for_url(self.url)
            except TokenFileError as exc:
                raise click.ClickException(str(exc)) from None
            self.stored = token is not None
        self.token = token

    def status(self, graph: str | None = None) -> dict[str, Any]:
        if graph is None:
            return self._request("GET", "/status")  # type: ignore[no-any-return]
        return {"graphs": {graph: self._request("GET", f"/graphs/{_q(graph)}")}}

    def change(self, what: str, graph: str, node: str, body: dict[str, Any], wait_s: float | None) -> dict[str, Any]:
        query = f"?wait_s={wait_s:g}" if wait_s is not None else ""
        path = f"/graphs/{_q(graph)}/nodes/{_q(node)}/{what}{query}"
        timeout = self.timeout_s + (wait_s if wait_s is not None else 120.0)
        return self._request("POST", path, body, timeout=timeout)  # type: ignore[no-any-return]

    def check(self) -> None:
        """Fail early with the real cause: nothing answers at :attr:`url`, or a server answers but
        this command has no token for it. (A wrong token is the server's 403, see :meth:`_explain`.)"""
        req = urllib.request.Request(self.url + "/-/healthz", method="GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s):
                pass
        except urllib.error.HTTPError:
            pass  # something answers (a proxy, another root path): the admin request tells the rest
        except (urllib.error.URLError, OSError) as exc:
            raise click.ClickException(self._unreachable(exc)) from None
        if not self.token:
            raise click.ClickException(
                f"A server answers at {self.url}, but this command has no admin token for it: pass --token or set "
                f"${ADMIN_TOKEN_ENV} to the token the server was started with. (A `dagserve run` on 127.0.0.1 "
                f"without one stores the token it creates in {token_dir()}, where this command looks; there is "
                f"none for this address.)"
            )

    def _unreachable(self, exc: BaseException) -> str:
        return unreachable(self.url, exc)

    def _request(self, method: str, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        return request_json(method, self.url + ADMIN_PREFIX + path, self.token, self._explain, body=body,
                            timeout_s=timeout or self.timeout_s)

    def _explain(self, exc: urllib.error.HTTPError) -> str:
        try:
            payload = json.loads(exc.read())
        except ValueError:
            payload = None
        error = payload.get("error") if isinstance(payload, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        kind = error.get("type") if isinstance(error, dict) else None
        # A 404 from the admin routes names the missing graph or node; any other 404 means the
        # route itself is absent.
        if exc.code == 404 and kind not in ("GraphNotFound", "NodeNotFoundError"):
            return (
                f"{self.url} has no admin routes. They are off unless the server is started with an admin "
                f"token: set ${ADMIN_TOKEN_ENV} (or pass admin_token=) when starting it."
            )
        if exc.code == 401:
            return (
                f"The server at {self.url} answers but refused the request: {message or 'no token'}. Pass --token "
                f"or set ${ADMIN_TOKEN_ENV}."
            )
        if exc.code == 403:
            if self.stored:
                return (
                    f"The server rejected the admin token stored in {token_dir()} (left by an earlier server on "
                    f"this address?); pass the server's token with --token or ${ADMIN_TOKEN_ENV}."
                )
            return (
                f"The server at {self.url} answers but rejected the admin token; use the one it was started with "
                f"(--token or ${ADMIN_TOKEN_ENV})."
            )
        return message or f"HTTP {exc.code}: {exc.reason}"


def admin_client(url: str, token: str | None) -> AdminClient:
    """The client every command on a running server starts with (status, scale, update, and any
    new one): it says first whether anything answers at ``url``, then whether a token is missing,
    before the command's own request."""
    client = AdminClient(url, token)
    client.check()
    return client


def base_url(url: str) -> str:
    """``url`` without its trailing slash; a usage error unless it is an http(s) URL."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise click.BadParameter(f"{url!r} is not an http(s) URL, e.g. {DEFAULT_URL}.", param_hint="--url")
    return url.rstrip("/")


def request_json(
    method: str, url: str, token: str | None, explain: Callable[[urllib.error.HTTPError], str], *,
    body: Any = None, timeout_s: float = 30.0,
) -> Any:
    """One JSON request to a dagserve server; an error answer becomes a :class:`click.ClickException`
    saying ``explain(error)``, an unreachable server one saying how to point at it."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    req.add_header("accept", "application/json")
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise click.ClickException(explain(exc)) from None
    except (urllib.error.URLError, OSError) as exc:
        server = urllib.parse.urlunsplit(urllib.parse.urlsplit(url)[:2] + ("", "", ""))
        raise click.ClickException(unreachable(server, exc)) from None


def unreachable(url: str, exc: BaseException) -> str:
    """What a command says when nothing answers at ``url`` (not a token problem: see AdminClient.check)."""
    reason = getattr(exc, "reason", exc)
    return (
        f"Nothing answers at {url} ({reason}). Is `dagserve run` serving there? Pass its address with "
        f"--url or ${URL_ENV}."
    )


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


# -- rendering -------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.2g}ms" if seconds < 0.001 else f"{seconds * 1000:.3g}ms"
    return f"{seconds:.2f}s"


def _batch(options: dict[str, Any]) -> str:
    size = options.get("max_batch_size")
    if not size:
        return "-"
    from dagserve._options import NodeOptions

    wait = options.get("batch_wait_timeout_s", NodeOptions.model_fields["batch_wait_timeout_s"].default)
    return f"{size}/{_ms(float(wait))}"


def _gpu(options: dict[str, Any]) -> str:
    gpus = options.get("num_gpus") or 0
    return f"{gpus:g}" if gpus else "-"


def _replicas(node: dict[str, Any]) -> str:
    if node.get("inline"):
        return "inline"
    text = f"{node['target_replicas']}/{node['running_replicas']}/{node.get('pending_replicas', 0)}"
    auto = node.get("options", {}).get("autoscaling")
    if isinstance(auto, dict):
        text += f" ({auto.get('min_replicas', 1)}-{auto.get('max_replicas', 4)})"
    return text


def _transport(node: dict[str, Any]) -> str:
    """How the server's calls reach the node, short: "socket" (local socket), "cross-node",
    "serve", "inline", or for "mixed" the replicas reached each way ("socket 1+cross-node 1")."""
    kind = str(node.get("transport") or "-")
    counts = node.get("transport_replicas") or {}
    if kind == "mixed" and counts:
        return "+".join(f"{_SHORT.get(way, way)} {n}" for way, n in sorted(counts.items(), reverse=True))
    return _SHORT.get(kind, kind)


_SHORT = {"local socket": "socket"}


def status_table(graph: str, status: dict[str, Any], *, title: str | None = None) -> Any:
    """A rich Table for one graph's status (as the admin routes return it).

    The state, batch and GPU columns appear only when some node has something to show there, so
    the table fits an 80-column terminal.
    """
    from rich import box
    from rich.table import Table

    nodes: dict[str, dict[str, Any]] = status.get("nodes", {})
    notes = []
    if title is None:
        ready = "ready" if status.get("ready") else "serving" if status.get("serving") else "NOT READY"
        waiting = sum(int(p.get("target_replicas", 0)) - int(p.get("running_replicas", 0))
                      for p in (status.get("pending") or {}).values())
        if waiting > 0:
            ready += f", {waiting} replica(s) pending"
        title = f"{graph} ({status.get('backend', '?')}, {ready})"
        notes.append(f"{status.get('in_flight', 0)} in flight")
        lat = status.get("latency") or {}
        if lat:
            notes.append(f"requests p50 {_ms(lat.get('p50_s'))} p99 {_ms(lat.get('p99_s'))}")
    notes.append("replicas: target/running/pending (autoscaling min-max)")
    rows = [(name, node, node.get("options") or {}) for name, node in nodes.items()]
    show_state = any(n.get("state", "RUNNING") != "RUNNING" for _, n, _ in rows)
    show_batch = any(o.get("max_batch_size") for _, _, o in rows)
    show_gpu = any(o.get("num_gpus") for _, _, o in rows)
    show_transport = any(n.get("transport") not in (None, "inline") for _, n, _ in rows)  # all inline: nothing to tell
    if show_batch:
        notes.append("batch: max size/wait")
    if show_transport:
        notes.append("transport: socket (this Ray node), cross-node (TCP), serve, inline, no calls yet")
    table = Table(
        title=title, caption="; ".join(notes), title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD
    )
    columns = ["node", "replicas"] + ["state"] * show_state + ["batch"] * show_batch + ["GPU"] * show_gpu
    columns += ["transport"] * show_transport
    for column in [*columns, "requests", "errors", "p50", "p99"]:
        table.add_column(column, justify="left" if column in ("node", "state", "transport") else "right", no_wrap=True)
    for name, node, options in rows:
        state = node.get("state", "?")
        errors = node.get("errors", 0)
        cells = [name, _replicas(node)]
        if show_state:
            cells.append(state if state == "RUNNING" else f"[yellow]{state}[/]")
        if show_batch:
            cells.append(_batch(options))
        if show_gpu:
            cells.append(_gpu(options))
        if show_transport:
            cells.append(_transport(node))
        cells += [
            str(node.get("requests", 0)),
            f"[red]{errors}[/]" if errors else "0",
            _ms(node.get("p50_s")),
            _ms(node.get("p99_s")),
        ]
        table.add_row(*cells)
    return table


def _notes(status: dict[str, Any]) -> list[str]:
    out = []
    for name, node in status.get("nodes", {}).items():
        for key in ("pending_reason", "message", "transport_note"):
            if node.get(key):
                out.append(f"{name}: {node[key]}")
    return out


def _models(status: dict[str, Any]) -> list[str]:
    """A line per multiplexed node: its model cache's figures and the ids each replica holds."""
    out = []
    for name, node in status.get("nodes", {}).items():
        m = node.get("models") or {}
        if not m:
            continue
        ratio = "-" if m.get("hit_ratio") is None else f"{m['hit_ratio']:.2f}"
        held = "; ".join(f"{r}: {', '.join(ids) or '-'}" for r, ids in (m.get("replicas") or {}).items())
        out.append(
            f"{name}: models (at most {m.get('max_models_per_replica')} per replica) {m.get('loads', 0)} loaded in "
            f"{m.get('load_seconds', 0.0):.2f} s, {m.get('evictions', 0)} evicted, hit ratio {ratio}; {held or 'no replica'}"
        )
    return out


def _print_status(data: dict[str, Any], *, verbose: bool = False) -> None:
    console = cli_console()
    graphs = data.get("graphs", {})
    if not graphs:
        console.print("No graphs are served.")
    for name, status in graphs.items():
        console.print(status_table(name, status))
        for note in _notes(status):
            console.print(f"  [yellow]{note}[/]")
        for line in _models(status):
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
        for line in _jobs(status):
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
        for line in _settings(status) if verbose else ():
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def _jobs(status: dict[str, Any]) -> list[str]:
    """The job queue's line (docs/jobs.md), when the graph's queue is in use."""
    jobs = status.get("jobs")
    if not jobs:
        return []
    oldest = f" (oldest waiting {_ms(jobs['oldest_age_s'])})" if jobs.get("oldest_age_s") is not None else ""
    return [
        f"jobs: {jobs['queued']} queued{oldest}, {jobs['running']} running ({jobs['running_here']} here, at most "
        f"{jobs['concurrency']} at once); store {jobs['store']}"
    ]


def _settings(status: dict[str, Any]) -> list[str]:
    """The backend's settings in force (on Ray: Serve's, in the serving process and its replicas)."""
    settings = status.get("settings") or {}
    out = []
    if settings.get("caller"):
        out.append("Serve in the serving process: " + " ".join(f"{k}={v}" for k, v in settings["caller"].items()))
    if settings.get("replica_env"):
        out.append("Serve settings carried to replicas: " + " ".join(f"{k}={v}" for k, v in settings["replica_env"].items()))
    return out


# -- commands --------------------------------------------------------------------------------------

_url_option = click.option(
    "--url", envvar=URL_ENV, default=DEFAULT_URL, show_default=True, help=f"The server's base URL (or ${URL_ENV})."
)
_token_option = click.option(
    "--token",
    envvar=ADMIN_TOKEN_ENV,
    help=f"Admin token (default: ${ADMIN_TOKEN_ENV}, else the one a loopback `dagserve run` stored for --url).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON instead of tables.")
_wait_option = click.option(
    "--wait", "wait_s", type=click.FloatRange(min=0), default=None, help="Seconds to wait for the new replicas."
)


@click.command("status")
@click.argument("graph", required=False)
@_url_option
@_token_option
@_json_option
@click.option("--verbose", "-v", is_flag=True, help="Also print the backend's settings in force (on Ray, Serve's).")
def status_command(graph: str | None, url: str, token: str | None, as_json: bool, verbose: bool) -> None:
    """Show every node of a running server's graphs (or of GRAPH): replicas target/running/pending,
    batching, GPU share, transport (inline, local socket, cross-node, serve), requests, errors and
    p50/p99 latency."""
    data = admin_client(url, token).status(graph)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_status(data, verbose=verbose)


@click.command("scale")
@click.argument("graph")
@click.argument("node")
@click.option("--replicas", "-n", type=click.IntRange(min=1), help="Fixed number of replicas.")
@click.option("--min", "min_replicas", type=click.IntRange(min=0), help="Autoscaling: fewest replicas.")
@click.option("--max", "max_replicas", type=click.IntRange(min=1), help="Autoscaling: most replicas.")
@click.option("--target-ongoing", type=click.FloatRange(min=0, min_open=True), help="Autoscaling: ongoing requests per replica to aim for.")
@_wait_option
@_url_option
@_token_option
@_json_option
def scale_command(
    graph: str,
    node: str,
    replicas: int | None,
    min_replicas: int | None,
    max_replicas: int | None,
    target_ongoing: float | None,
    wait_s: float | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Scale NODE of GRAPH on a running server while it serves: `--replicas N`, or autoscaling
    between `--min` and `--max`. Other nodes keep their replicas."""
    auto = {k: v for k, v in {"min_replicas": min_replicas, "max_replicas": max_replicas,
                              "target_ongoing_requests": target_ongoing}.items() if v is not None}
    if replicas is not None and auto:
        raise click.UsageError("Give either --replicas or autoscaling bounds (--min/--max/--target-ongoing), not both.")
    if replicas is None and not auto:
        raise click.UsageError("Say how to scale: --replicas N, or --min/--max for autoscaling.")
    body: dict[str, Any] = {"num_replicas": replicas} if replicas is not None else {"autoscaling": auto}
    result = admin_client(url, token).change("scale", graph, node, body, wait_s)
    _print_change(graph, node, result, "scaled", as_json)


@click.command("update")
@click.argument("graph")
@click.argument("node")
@click.option("--max-batch-size", type=click.IntRange(min=1), help="Largest batch a batched node runs.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), help="How long a batch waits to fill, in ms.")
@click.option("--max-ongoing", type=click.IntRange(min=1), help="Requests one replica takes at once.")
@click.option("--max-queued", type=click.IntRange(min=1), help="Requests that may wait before 503s.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), help="Per-call timeout in seconds.")
@_wait_option
@_url_option
@_token_option
@_json_option
def update_command(
    graph: str,
    node: str,
    max_batch_size: int | None,
    batch_wait_ms: float | None,
    max_ongoing: int | None,
    max_queued: int | None,
    timeout_s: float | None,
    wait_s: float | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Change NODE's options on a running server with a rolling update (no request fails)."""
    body = {
        k: v
        for k, v in {
            "max_batch_size": max_batch_size,
            "batch_wait_timeout_s": batch_wait_ms / 1000 if batch_wait_ms is not None else None,
            "max_ongoing_requests": max_ongoing,
            "max_queued_requests": max_queued,
            "timeout_s": timeout_s,
        }.items()
        if v is not None
    }
    if not body:
        raise click.UsageError("Nothing to update: give at least one option, e.g. --max-batch-size 16.")
    result = admin_client(url, token).change("update", graph, node, body, wait_s)
    _print_change(graph, node, result, "updated", as_json)


def _print_change(graph: str, node: str, result: dict[str, Any], verb: str, as_json: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    status = result.get("node", {})
    name = status.get("name", node)
    console = cli_console()
    console.print(status_table(graph, {"nodes": {name: status}}, title=f"{verb.capitalize()} {graph}/{name}"))
    for note in _notes({"nodes": {name: status}}):
        console.print(f"  [yellow]{note}[/]")
