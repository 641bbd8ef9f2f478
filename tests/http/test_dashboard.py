"""The dashboard's routes without a browser: who may open it, the token cookie, the refusal of
other origins, its headers and its JSON (tests/http/test_dashboard_browser.py drives the page)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

import dagserve
from dagserve.http.settings import IngressConfig
from dagserve.http.dashboard import COOKIE, OUTPUT_ID, topology
from dagserve.http.ingress import create_app
from tests.background_server import BackgroundServer
from tests.example_graphs import chain, fan_out, switched

ADMIN = "admin-s3cret"
TOKEN = "request-s3cret"


@pytest.fixture(scope="module")
def app() -> Iterator[dagserve.App]:
    app = dagserve.deploy(chain(), backend="local")
    yield app
    app.shutdown()


def served(app: dagserve.App, **config: Any) -> Any:
    """The ingress as dagserve.serve builds it (the dashboard's loopback rule applies)."""
    return create_app({app.name: app}, IngressConfig(local_dashboard=True, **config))


def client(web: Any, host: str = "127.0.0.1") -> httpx.AsyncClient:
    # ASGITransport puts the URL's host in the scope's "server": the address the connection came to.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url=f"http://{host}")


# -- who may open it ---------------------------------------------------------------------------------


async def test_on_loopback_without_a_token_it_is_open_and_read_only(app: dagserve.App) -> None:
    async with client(served(app)) as c:
        page = await c.get("/-/dashboard")
        data = await c.get("/-/dashboard/data")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert data.status_code == 200 and data.json()["graph"] == "chain"
    assert data.json()["admin"] is False  # no admin routes: the page shows no controls


async def test_a_loopback_connection_with_another_host_name_needs_a_token(app: dagserve.App) -> None:
    # A proxy on this machine forwarding the public's requests: Host names the public name.
    web = served(app, admin_token=ADMIN, allowed_hosts=("dash.example.com",))
    async with client(web) as c:
        r = await c.get("/-/dashboard/data", headers={"host": "dash.example.com"})
    assert r.status_code == 401


async def test_on_another_address_it_needs_a_token(app: dagserve.App) -> None:
    async with client(served(app), host="10.1.2.3") as c:
        r = await c.get("/-/dashboard")
        data = await c.get("/-/dashboard/data")
    assert r.status_code == 403 and "needs a token" in r.text and r.headers["content-type"].startswith("text/html")
    assert data.status_code == 403 and data.json()["error"]["type"] == "Forbidden"

    async with client(served(app, admin_token=ADMIN, token=TOKEN), host="10.1.2.3") as c:
        assert (await c.get("/-/dashboard/data")).status_code == 401
        assert (await c.get("/-/dashboard/data", headers={"authorization": "Bearer wrong"})).status_code == 401
        for token in (ADMIN, TOKEN):  # served by dagserve: the request token reads it too
            assert (await c.get("/-/dashboard/data", headers={"authorization": f"Bearer {token}"})).status_code == 200


async def test_a_request_token_closes_it_on_loopback_too(app: dagserve.App) -> None:
    async with client(served(app, token=TOKEN)) as c:
        assert (await c.get("/-/dashboard/data")).status_code == 401
        assert (await c.get("/-/dashboard/data", headers={"authorization": f"Bearer {TOKEN}"})).status_code == 200


async def test_token_in_the_url_sets_a_strict_http_only_cookie_and_is_dropped(app: dagserve.App) -> None:
    async with client(served(app, admin_token=ADMIN), host="10.1.2.3") as c:
        r = await c.get("/-/dashboard", params={"token": ADMIN, "graph": "chain"})
        assert r.status_code == 303
        assert r.headers["location"] == "/-/dashboard?graph=chain"  # the token leaves the address bar
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/-/dashboard" in cookie
        assert ADMIN not in cookie  # an HMAC of the token, not the token
        assert (await c.get("/-/dashboard")).status_code == 200  # the client kept the cookie
        assert (await c.get("/-/dashboard/data")).status_code == 200
        c.cookies.clear()
        assert (await c.get("/-/dashboard/data")).status_code == 401
        wrong = await c.get("/-/dashboard", params={"token": "guess"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers


async def test_under_asgi_it_follows_the_admin_routes_rules(app: dagserve.App) -> None:
    async with client(app.asgi(token=TOKEN)) as c:  # no admin token: no dashboard, like no admin routes
        assert (await c.get("/-/dashboard")).status_code == 404
        assert (await c.get("/-/dashboard/data")).status_code == 404
    async with client(app.asgi(admin_token=ADMIN, token=TOKEN)) as c:
        assert (await c.get("/-/dashboard")).status_code == 401  # loopback is not enough here
        assert (await c.get("/-/dashboard", params={"token": TOKEN})).status_code == 401  # the admin token only
        assert (await c.get("/-/dashboard", params={"token": ADMIN})).status_code == 303
        assert (await c.get("/-/dashboard/data")).status_code == 200


async def test_mounted_under_a_prefix_the_cookie_and_redirect_keep_it(app: dagserve.App) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    web = Starlette(routes=[Mount("/ml", app=app.asgi(admin_token=ADMIN))])
    async with client(web) as c:
        r = await c.get("/ml/-/dashboard", params={"token": ADMIN})
        assert r.headers["location"] == "/ml/-/dashboard"
        assert "Path=/ml/-/dashboard" in r.headers["set-cookie"]
        assert (await c.get("/ml/-/dashboard/data")).status_code == 200


# -- other origins -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"sec-fetch-site": "same-origin"}, 200),
        ({"sec-fetch-site": "none"}, 200),
        ({"sec-fetch-site": "cross-site"}, 403),
        ({"sec-fetch-site": "same-site"}, 403),  # another port of this machine is the same site
        ({"origin": "http://127.0.0.1"}, 200),
        ({"origin": "http://127.0.0.1:9999"}, 403),
        ({"origin": "http://evil.example"}, 403),
        ({"origin": "null"}, 403),
    ],
)
async def test_the_json_answers_its_own_origin_only(app: dagserve.App, headers: dict[str, str], status: int) -> None:
    async with client(served(app)) as c:
        r = await c.get("/-/dashboard/data", headers=headers)
    assert r.status_code == status
    if status == 403:
        assert r.json()["error"]["type"] == "CrossSiteRequest"


async def test_the_page_sends_a_strict_csp_and_no_inline_script(app: dagserve.App) -> None:
    async with client(served(app)) as c:
        r = await c.get("/-/dashboard")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text and "http" not in r.text  # scripts are files; every URL is relative
    assert '<script src="static/dashboard/dashboard.js" defer></script>' in r.text


# -- the JSON ------------------------------------------------------------------------------------------


async def test_the_json_has_the_topology_figures_and_only_newer_points_after(app: dagserve.App) -> None:
    web = served(app)
    async with client(web) as c:
        await c.post("/", json=3)
        first = (await c.get("/-/dashboard/data")).json()
        assert {n["id"] for n in first["topology"]["nodes"]} == {"input", "pre", "Scale", "post", OUTPUT_ID}
        assert first["nodes"]["Scale"]["option_lines"] == ["1 replica"]
        assert first["graphs"] == [{"name": "chain", "ready": True}]
        assert set(first["history"]) == {"interval_s", "points", "t", "requests", "nodes"}
        later = (await c.get("/-/dashboard/data", params={"since": "1e12"})).json()
        assert "topology" not in later and later["history"]["t"] == []
        for bad in ("soon", "nan", "inf"):
            assert (await c.get("/-/dashboard/data", params={"since": bad})).status_code == 400
        assert (await c.get("/-/dashboard/data", params={"graph": "nope"})).status_code == 404


def test_several_graphs_are_listed_and_each_has_its_own_data() -> None:
    apps = [dagserve.deploy(chain(), backend="local"), dagserve.deploy(fan_out(0.0), backend="local")]
    try:
        web = dagserve.asgi_app(apps, admin_token=ADMIN)
        with BackgroundServer(web) as url, httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}) as c:
            data = c.get("/-/dashboard/data", params={"graph": "fan_out"}).json()
            assert [g["name"] for g in data["graphs"]] == ["chain", "fan_out"]
            assert data["graph"] == "fan_out" and set(data["nodes"]) == {"pre", "slow", "combine"}
            assert c.get("/-/dashboard/data").json()["graph"] == "chain"  # the first by default
    finally:
        for a in apps:
            a.shutdown()


def test_topology_folds_selections_into_edges_and_ends_at_the_output() -> None:
    topo = topology(dagserve.compile(switched()))
    ids = [n["id"] for n in topo["nodes"]]
    assert not any("[" in i for i in ids)  # inp["x"] is not a node
    assert ids[-1] == OUTPUT_ID and "switch" in ids
    edges = {(e["source"], e["target"]): e["label"] for e in topo["edges"]}
    assert edges[("input", "counted")] == "['x']"
    assert edges[("input", "switch")] == "['route']"
    assert edges[("counted", "switch")] == "case 'a'"
    assert edges[("switch", OUTPUT_ID)] is None
    kinds = {n["id"]: n["kind"] for n in topo["nodes"]}
    assert kinds["counted#2"] == "call" and kinds["switch"] == "route" and kinds["input"] == "input"
