"""The live dashboard: ``GET /-/dashboard`` (the page) and ``GET /-/dashboard/data`` (its JSON).

The page (script and style from :mod:`dagserve.http.assets`, nothing inline) polls the JSON every
2 s: per graph its diagram (:func:`topology`), each node's figures and the last 15 minutes of
them (:mod:`dagserve.observe.history`). It is read-only; with the admin token, which the user
types into the page, its scale and update controls call the admin routes
(:mod:`dagserve.http.admin`) with ``Authorization: Bearer``.

Who may open it (docs/dashboard.md):

* served by dagserve itself (``dagserve run``, :func:`dagserve.serve`): anyone on this machine
  when the server has no request token (a loopback connection with a loopback ``Host``);
  otherwise the request token or the admin token is needed;
* under :meth:`App.asgi() <dagserve.App.asgi>` (your own server, whose exposure dagserve cannot
  know): the admin routes' rules, so only with an admin token configured, and that token.

A browser cannot send a bearer header when it navigates, so opening
``/-/dashboard?token=<token>`` once sets an ``HttpOnly; SameSite=Strict`` cookie (an HMAC of the
token, not the token) and redirects to the URL without it. The JSON endpoint answers requests of
this origin only (``Sec-Fetch-Site``, ``Origin``), as the page is its only reader.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import math
import urllib.parse
from typing import TYPE_CHECKING, Any

from dagserve.compiler.plan import Plan, refs_in
from dagserve.http.assets import page_headers
from dagserve.http.errors import HTTPError
from dagserve.http.hosts import host_name, is_loopback
from dagserve.http.jsonio import dump_json
from dagserve.observe.history import History, history_for
from dagserve.render.labels import option_lines

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute

    from dagserve.app import App
    from dagserve.http.settings import IngressConfig

    #: Raises an HTTPError unless the Authorization header carries the token (``ingress.check_bearer``).
    BearerCheck = Callable[[str | None, bytes], None]

__all__ = ["COOKIE", "DASHBOARD_PATH", "OUTPUT_ID", "Dashboard", "check_same_origin", "topology"]

DASHBOARD_PATH = "/-/dashboard"
#: The cookie ``?token=`` sets: an HMAC of the token, sent back on the dashboard's paths only.
COOKIE = "dagserve-dashboard"
#: The id of the diagram's output node (step names never start with a space).
OUTPUT_ID = " output"
_COOKIE_MESSAGE = b"dagserve dashboard cookie v1"


class Dashboard:
    """The dashboard of one ingress: its routes, who may see them, and each graph's history."""

    def __init__(self, apps: Mapping[str, App], config: IngressConfig, check_bearer: BearerCheck) -> None:
        self.apps = dict(apps)
        self.config = config
        self._check_bearer = check_bearer  # the ingress's (http/ingress.py): one copy of the header's rules
        # Under app.asgi() only the admin token opens it; served by dagserve, the request token too.
        given = [config.admin_token] if not config.local_dashboard else [config.admin_token, config.token]
        self._tokens = [t.encode("utf-8") for t in given if t]
        self._cookies = [_cookie_value(t) for t in self._tokens]
        # Recording starts with the server (not when the page first opens), and only where a page can be.
        self.histories: dict[str, History] = (
            {name: history_for(app) for name, app in self.apps.items() if not app.closed} if self.enabled else {}
        )

    @property
    def enabled(self) -> bool:
        """Served by dagserve itself, or with an admin token (the admin routes' rule under asgi)."""
        return self.config.local_dashboard or bool(self.config.admin_token)

    def routes(self) -> list[BaseRoute]:
        from starlette.routing import Route

        if not self.enabled:
            return []
        return [
            Route(DASHBOARD_PATH, self.page, methods=["GET"], name="dashboard"),
            Route(DASHBOARD_PATH + "/data", self.data, methods=["GET"], name="dashboard_data"),
        ]

    # -- access ------------------------------------------------------------------------------------
    def _allowed(self, request: Request) -> bool:
        header = request.headers.get("authorization")
        if header is not None:
            return any(self._bearer_is(header, t) for t in self._tokens)
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and any(hmac.compare_digest(cookie.encode("ascii", "replace"), c) for c in self._cookies):
            return True
        return self.config.local_dashboard and not self.config.token and _from_this_machine(request)

    def _bearer_is(self, header: str, token: bytes) -> bool:
        try:
            self._check_bearer(header, token)
        except HTTPError:
            return False
        return True

    def _refusal(self) -> HTTPError:
        if not self._tokens:
            return HTTPError(
                403,
                "The dashboard of a server reachable from other machines needs a token, and this server has "
                "none; serve with an admin token (--admin-token / $DAGSERVE_ADMIN_TOKEN) and open "
                "/-/dashboard?token=<token> once.",
                error_type="Forbidden",
            )
        which = "the admin token" if not self.config.local_dashboard else "the server's token or admin token"
        return HTTPError(
            401,
            f"The dashboard needs {which}: open /-/dashboard?token=<token> once (a cookie keeps it), or send "
            "'Authorization: Bearer <token>'.",
            error_type="Unauthorized",
        )

    # -- routes ------------------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        """The HTML page; ``?token=`` sets the cookie and redirects to the URL without it."""
        from starlette.responses import HTMLResponse, RedirectResponse

        token = request.query_params.get("token")
        if token is not None:
            given = token.encode("utf-8", "replace")
            if not any(hmac.compare_digest(given, t) for t in self._tokens):
                wrong = HTTPError(401, "That token is not this server's token.", error_type="Unauthorized")
                return _refused_page(wrong)
            root = request.scope.get("root_path", "")
            query = {k: v for k, v in request.query_params.items() if k != "token"}
            target = root + DASHBOARD_PATH + ("?" + urllib.parse.urlencode(query) if query else "")
            answer = RedirectResponse(target, status_code=303, headers=page_headers())
            answer.set_cookie(
                COOKIE,
                _cookie_value(given).decode(),
                path=root + DASHBOARD_PATH,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return answer
        if not self._allowed(request):
            return _refused_page(self._refusal())
        title = self.config.title or "dagserve"
        return HTMLResponse(_page(title), headers=page_headers())

    async def data(self, request: Request) -> Response:
        """The JSON the page polls: ``?graph=<name>`` (default: the first), ``?since=<now of the
        previous answer>`` for only the newer points (and no topology)."""
        from starlette.responses import Response

        check_same_origin(request)
        if not self._allowed(request):
            raise self._refusal()
        name = request.query_params.get("graph") or next(iter(self.apps))
        history = self.histories.get(name)
        if history is None:
            raise HTTPError(404, f"No graph {name!r} is served here; graphs: {sorted(self.apps)}.")
        since = _since(request.query_params.get("since"))
        if since is None:  # the whole history (tens of thousands of values): off the event loop
            from starlette.concurrency import run_in_threadpool

            content = await run_in_threadpool(self._answer, name, history, since)
        else:
            content = self._answer(name, history, since)
        headers = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
        return Response(content, media_type="application/json", headers=headers)

    def _answer(self, name: str, history: History, since: float | None) -> bytes:
        body = history.snapshot(since)
        _describe_options(history.app.plan, body["nodes"])
        body["graph"] = name
        body["graphs"] = [{"name": n, "ready": h.latest_ready()} for n, h in self.histories.items()]
        body["admin"] = bool(self.config.admin_token)
        if since is None:
            body["topology"] = topology(history.app.plan)
        # lenient: options in force may hold values JSON has no type for; the page only prints them.
        return dump_json(body, lenient=True)


def check_same_origin(request: Request) -> None:
    """Refuse (403) a request a page of another origin made: the browser says so in
    ``Sec-Fetch-Site`` (anything but ``same-origin``, or ``none`` for a typed URL) or in an
    ``Origin`` header naming another host. Clients that are not browsers send neither."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise _cross_site(f"(Sec-Fetch-Site: {site[:40]})")
    origin = request.headers.get("origin")
    if origin is not None:
        netloc = urllib.parse.urlsplit(origin).netloc.lower()
        if origin == "null" or netloc != request.headers.get("host", "").lower():
            raise _cross_site(f"(Origin: {origin[:100]!r})")


def _since(text: str | None) -> float | None:
    try:
        since = float(text) if text else None
    except ValueError:
        since = math.nan
    if since is not None and not math.isfinite(since):
        raise HTTPError(400, f"since must be a number (the 'now' of a previous answer), got {text!r}.")
    return since


def _cross_site(said: str) -> HTTPError:
    return HTTPError(403, f"This route answers pages of its own origin only {said}.", error_type="CrossSiteRequest")


def topology(plan: Plan) -> dict[str, Any]:
    """The diagram the page draws: nodes (the input, call and routing steps, the output) and the
    edges between them; selections (``inp["x"]``) are folded into the edge that carries them."""
    steps = plan.steps
    nodes: list[dict[str, Any]] = []
    for s in steps:
        if s.kind == "select":
            continue
        kind = "input" if s.kind == "input" else "call" if s.kind in ("call", "map") else "route"
        nodes.append({"id": s.name, "kind": kind, "step": s.kind, "deployment": s.deployment, "streams": s.streams})

    selects = {s.name for s in steps if s.kind == "select"}
    into = {e.target: e.label or "" for e in plan.edges if e.target in selects}  # a select's key, e.g. "['x']"
    by_name = {s.name: s for s in steps}

    def origin(name: str, label: str | None) -> tuple[str, str | None]:
        s, path = by_name[name], ""
        while s.kind == "select" and s.inputs:
            path = into.get(s.name, "") + path
            s = steps[s.inputs[0]]
        if label is not None and label.startswith("arg") and label[3:].isdigit():
            label = None  # positional arguments: the arrow says it
        return s.name, path or label

    edges: dict[tuple[str, str], dict[str, Any]] = {}
    for e in plan.edges:
        if e.target in selects:
            continue
        source, label = origin(e.source, e.label)
        edges.setdefault((source, e.target), {"source": source, "target": e.target, "label": label})
    for i in refs_in(plan.output):
        source, label = origin(steps[i].name, None)
        edges.setdefault((source, OUTPUT_ID), {"source": source, "target": OUTPUT_ID, "label": label})
    first_step = {}
    for s in steps:
        if s.deployment is not None:
            first_step.setdefault(s.deployment, s.name)
    for spec in plan.deployments:
        if spec.name not in first_step:  # reached through handles only
            nodes.append({"id": spec.name, "kind": "call", "step": "handle", "deployment": spec.name, "streams": False})
            first_step[spec.name] = spec.name
    for holder, callee in plan.calls:
        source, target = first_step.get(holder, holder), first_step.get(callee, callee)
        edges.setdefault((source, target), {"source": source, "target": target, "label": "handle", "dashed": True})
    output = {"id": OUTPUT_ID, "kind": "output", "step": "output", "deployment": None, "streams": bool(plan.streams)}
    nodes.append(output)
    return {"nodes": nodes, "edges": list(edges.values())}


def _describe_options(plan: Plan, nodes: dict[str, dict[str, Any]]) -> None:
    """Each node's options in force as the diagrams word them ("batch 8, wait 10 ms", "GPU 0.5")."""
    for spec in plan.deployments:
        node = nodes.get(spec.name)
        if node is not None:
            node["option_lines"] = option_lines(spec, live=False)
            node["batched"] = spec.batched


def _cookie_value(token: bytes) -> bytes:
    return hmac.new(token, _COOKIE_MESSAGE, hashlib.sha256).hexdigest().encode()


def _from_this_machine(request: Request) -> bool:
    """A connection to a loopback address, naming a loopback host (not a name a proxy forwards)."""
    server = request.scope.get("server")
    host = request.headers.get("host")
    return bool(server) and is_loopback(str(server[0])) and host is not None and is_loopback(host_name(host))


def _refused_page(exc: HTTPError) -> Response:
    from starlette.responses import HTMLResponse

    message = html.escape(str(exc))
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>dagserve dashboard</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="static/dashboard/dashboard.css"></head>'
        f'<body class="refused"><main><h1>dagserve dashboard</h1><p>{message}</p></main></body></html>'
    )
    return HTMLResponse(body, status_code=exc.status_code, headers=page_headers())


def _page(title: str) -> str:
    t = html.escape(title)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t} · dashboard</title>
<link rel="icon" href="static/dashboard/icon.svg" type="image/svg+xml">
<link rel="stylesheet" href="static/dashboard/dashboard.css">
<script src="static/dashboard/dashboard.js" defer></script>
</head>
<body>
<header class="top">
  <div class="brand"><img src="static/dashboard/icon.svg" alt="" width="22" height="22"><span>{t}</span></div>
  <nav id="graphs" class="graphs" aria-label="Graphs"></nav>
  <div class="summary" id="summary"></div>
  <div class="admin" id="admin"></div>
</header>
<main class="layout">
  <section class="card diagram-card">
    <div class="card-head"><h2>Graph</h2><span class="hint" id="updated">connecting…</span></div>
    <div class="diagram" id="diagram"></div>
  </section>
  <aside class="card panel" id="panel"><p class="hint">Select a node to see its options, recent errors and controls.</p></aside>
  <section class="charts">
    <div class="card chart-card"><div class="card-head"><h2>Requests/s by outcome</h2></div><div class="chart" id="chart-requests"></div></div>
    <div class="card chart-card"><div class="card-head"><h2>Latency per node</h2><span class="hint">p99 solid, p50 dashed</span></div><div class="chart" id="chart-latency"></div></div>
    <div class="card chart-card"><div class="card-head"><h2>Replicas per node</h2></div><div class="chart" id="chart-replicas"></div></div>
  </section>
  <section class="card errors-card" id="errors"></section>
</main>
</body>
</html>
"""
