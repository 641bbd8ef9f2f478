"""The files the pages load, shipped in the package: integrity of the vendored ones, the static
route, and pages that name nothing outside this origin."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest

import dagserve
from dagserve.http.assets import STATIC_DIR, VENDORED, static_files, vendored
from tests.example_graphs import chain


def test_vendored_files_match_their_manifest() -> None:
    manifest = vendored()
    assert VENDORED == {"swagger-ui-dist": "5.35.0"}  # pinned; scripts/vendor_swagger_ui.sh VERSION changes it
    for package, info in manifest.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", info["version"]), package
        assert info["integrity"].startswith("sha512-") and len(info["tarball_sha256"]) == 64
        for path, digest in info["files"].items():
            assert hashlib.sha256((STATIC_DIR / path).read_bytes()).hexdigest() == digest, f"{path} was changed"
    swagger = manifest["swagger-ui-dist"]["files"]
    # The licence and notice travel with the code.
    assert {"swagger-ui/LICENSE", "swagger-ui/NOTICE", "swagger-ui/swagger-ui-bundle.js.LICENSE.txt"} <= set(swagger)
    assert "Apache License" in (STATIC_DIR / "swagger-ui/LICENSE").read_text()
    # Nothing vendored is in the folder without being in the manifest.
    on_disk = {p for p in static_files() if p.startswith("swagger-ui/")}
    assert on_disk == set(swagger)


def test_the_package_ships_the_static_files() -> None:
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["dagserve"]
    root = STATIC_DIR.parents[1]
    shipped = {p.relative_to(root).as_posix() for pattern in patterns for p in root.glob(pattern) if p.is_file()}
    assert {f"http/static/{name}" for name in static_files()} <= shipped


def test_our_scripts_and_styles_name_no_other_origin() -> None:
    for name, path in static_files().items():
        if name.startswith("swagger-ui/") or path.suffix not in (".js", ".css", ".svg"):
            continue
        text = path.read_text()
        urls = re.findall(r"https?://[^\s\"')]+", text)
        assert urls == ["http://www.w3.org/2000/svg"] * len(urls), f"{name} names {urls}"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = dagserve.deploy(chain(), backend="local")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.asgi()), base_url="http://127.0.0.1") as c:
        yield c
    app.shutdown()


async def test_static_route_serves_listed_files_with_etags(client: httpx.AsyncClient) -> None:
    r = await client.get("/-/static/dashboard/dashboard.js")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.content == (STATIC_DIR / "dashboard/dashboard.js").read_bytes()
    again = await client.get("/-/static/dashboard/dashboard.js", headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    css = await client.get("/-/static/swagger-ui/swagger-ui.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"


@pytest.mark.parametrize(
    "path", ["/-/static/nope.js", "/-/static/../assets.py", "/-/static/%2e%2e/assets.py", "/-/static/dashboard", "/-/static/vendor.json/x"]
)
async def test_static_route_serves_nothing_else(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 404
    assert "error" in r.json()
