"""Admin routes on a real local-backend App, through Starlette's ASGI interface (httpx)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import dagserve
from dagserve.http.admin import ADMIN_PREFIX, admin_mount, admin_routes, admin_token, graph_status
from dagserve.http.settings import ADMIN_TOKEN_ENV
from dagserve.observe.metrics import Metrics
from dagserve.observe.stats import stats_for

TOKEN = "s3cret-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@dagserve.node
def tokenize(text: str) -> list[str]:
    if text == "boom":
        raise ValueError("cannot tokenize 'boom'")
    return text.split()


#: Classifier calls that have started (all replicas live in this process on the local backend).
STARTED: list[int] = []


@dagserve.node(num_replicas=2)
class Classifier:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def __call__(self, words: list[str]) -> int:
        STARTED.append(len(words))
        await asyncio.sleep(self.delay)
        return len(words)


@dagserve.node(max_batch_size=4)
async def embed(items: list[list[str]]) -> list[int]:
    return [len(i) for i in items]


def make_graph(delay: float = 0.0, name: str = "pipeline") -> dagserve.Graph:
    with dagserve.Input() as inp:
        words = tokenize(inp["text"])
        out = {"n": Classifier(delay)(words), "e": embed(words)}
    return dagserve.Graph(out, name=name)


def web_app(apps: dict[str, dagserve.App], token: str | None, metrics: Metrics | None = None) -> Starlette:
    """A minimal ingress: POST /{graph} runs the graph; plus the admin routes."""

    async def run(request: Request) -> Response:
        app = apps[request.path_params["graph"]]
        return JSONResponse(await app.acall(await request.json()))

    return Starlette(routes=[*admin_mount(apps, token, metrics=metrics), Route("/{graph}", run, methods=["POST"])])


@pytest.fixture(autouse=True)
def no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def app(metrics: Metrics) -> Iterator[dagserve.App]:
    a = dagserve.deploy(make_graph(), backend="local")
    metrics.instrument(a)
    stats_for(a)
    yield a
    a.shutdown()


@pytest.fixture
async def client(app: dagserve.App, metrics: Metrics) -> AsyncIterator[httpx.AsyncClient]:
    web = web_app({"pipeline": app}, TOKEN, metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://test") as c:
        yield c


# -- configuration and auth ---------------------------------------------------------------------


def test_token_comes_from_the_argument_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert admin_token(None) is None
    assert admin_token("") is None and admin_token("   ") is None
    assert admin_token(" abc ") == "abc"
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-env")
    assert admin_token(None) == "from-env"
    assert admin_token("explicit") == "explicit"


async def test_no_token_means_no_routes(app: dagserve.App) -> None:
    assert admin_routes({"pipeline": app}, None) == []
    web = web_app({"pipeline": app}, None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://test") as c:
        for path in ("/status", "/graphs/pipeline"):
            assert (await c.get(ADMIN_PREFIX + path, headers=AUTH)).status_code == 404
        r = await c.post(f"{ADMIN_PREFIX}/graphs/pipeline/nodes/Classifier/scale", json={"num_replicas": 3}, headers=AUTH)
        assert r.status_code in (404, 405)  # not an admin route: nothing scaled
    assert app.status().nodes["Classifier"].running_replicas == 2


async def test_env_token_turns_the_routes_on(app: dagserve.App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
    web = web_app({"pipeline": app}, None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://test") as c:
        assert (await c.get(f"{ADMIN_PREFIX}/status", headers=AUTH)).status_code == 200
        assert (await c.get(f"{ADMIN_PREFIX}/status")).status_code == 401


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": TOKEN}, {"authorization": f"Basic {TOKEN}"}, {"authorization": "Bearer"}, {"authorization": "Bearer   "}],
    ids=["missing", "no-scheme", "basic", "empty", "blank"],
)
async def test_missing_or_malformed_authorization_is_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    r = await client.get(f"{ADMIN_PREFIX}/status", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    error = r.json()["error"]
    assert error["type"] == "Unauthorized" and error["status"] == 401
    assert "Authorization: Bearer <token>" in error["message"]


@pytest.mark.parametrize("token", ["wrong", TOKEN + "x", TOKEN[:-1], "ünïcode"])
async def test_wrong_token_is_403_on_every_route(client: httpx.AsyncClient, app: dagserve.App, token: str) -> None:
    headers = {"authorization": f"Bearer {token}".encode()}  # type: ignore[dict-item]
    assert (await client.get(f"{ADMIN_PREFIX}/status", headers=headers)).status_code == 403
    assert (await client.get(f"{ADMIN_PREFIX}/graphs/pipeline", headers=headers)).status_code == 403
    r = await client.post(f"{ADMIN_PREFIX}/graphs/pipeline/nodes/Classifier/scale", json={"num_replicas": 1}, headers=headers)
    assert r.status_code == 403 and "Wrong admin token" in r.json()["error"]["message"]
    assert app.status().nodes["Classifier"].running_replicas == 2  # nothing changed


async def test_scheme_is_case_insensitive(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{ADMIN_PREFIX}/status", headers={"authorization": f"bearer {TOKEN}"})).status_code == 200


# -- status ----------------------------------------------------------------------------------------


async def test_status_has_replicas_options_and_per_node_traffic(client: httpx.AsyncClient) -> None:
    for text in ("a b", "c d e", "f"):
        assert (await client.post("/pipeline", json={"text": text})).status_code == 200
    r = await client.get(f"{ADMIN_PREFIX}/status", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    status = r.json()["graphs"]["pipeline"]
    assert status["graph"] == "pipeline" and status["backend"] == "local" and status["ready"] is True
    assert status["in_flight"] == 0
    assert status["latency"]["count"] == 3
    nodes = status["nodes"]
    assert set(nodes) == {"tokenize", "Classifier", "embed"}
    cls = nodes["Classifier"]
    assert cls["target_replicas"] == cls["running_replicas"] == 2 and len(cls["replica_ids"]) == 2
    assert cls["requests"] == 3 and cls["errors"] == 0
    assert 0 < cls["p50_s"] <= cls["p99_s"]
    assert nodes["embed"]["options"] == {"max_batch_size": 4}
    one = (await client.get(f"{ADMIN_PREFIX}/graphs/pipeline", headers=AUTH)).json()
    assert one["nodes"]["tokenize"]["requests"] == 3


async def test_status_of_an_unknown_graph_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get(f"{ADMIN_PREFIX}/graphs/nope", headers=AUTH)
    assert r.status_code == 404
    error = r.json()["error"]
    assert (error["type"], error["status"]) == ("GraphNotFound", 404)
    assert error["message"] == "No graph named 'nope' is served here (graphs: pipeline)."


def test_graph_status_without_metrics_counts_the_recent_window() -> None:
    with dagserve.deploy(make_graph(), backend="local") as a:
        stats_for(a)
        a.call({"text": "x y"})
        status = graph_status(a, Metrics())  # not instrumented there: falls back to the window
    assert status["nodes"]["Classifier"]["requests"] == 1


# -- scale and update ------------------------------------------------------------------------------


async def test_scale_changes_one_node_and_no_other(client: httpx.AsyncClient, app: dagserve.App) -> None:
    before = app.status().nodes
    r = await client.post(f"{ADMIN_PREFIX}/graphs/pipeline/nodes/Classifier/scale", json={"num_replicas": 3}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["graph"] == "pipeline"
    assert body["node"]["name"] == "Classifier" and body["node"]["running_replicas"] == 3
    after = app.status().nodes
    assert set(before["Classifier"].replica_ids) < set(after["Classifier"].replica_ids)
    for other in ("tokenize", "embed"):
        assert after[other].replica_ids == before[other].replica_ids
    r = await client.post(
        f"{ADMIN_PREFIX}/graphs/pipeline/nodes/Classifier/scale",
        json={"autoscaling": {"min_replicas": 1, "max_replicas": 5}},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    assert r.json()["node"]["options"]["autoscaling"]["max_replicas"] == 5
    assert (await client.post("/pipeline", json={"text": "still works"})).json() == {"n": 2, "e": 2}


async def test_update_changes_options(client: httpx.AsyncClient, app: dagserve.App) -> None:
    r = await client.post(
        f"{ADMIN_PREFIX}/graphs/pipeline/nodes/embed/update?wait_s=10",
        json={"max_batch_size": 8, "batch_wait_timeout_s": 0.002, "max_queued_requests": 50},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    assert r.json()["node"]["options"] == {"max_batch_size": 8, "batch_wait_timeout_s": 0.002, "max_queued_requests": 50}
    assert app.plan.deployment("embed").options.max_batch_size == 8
    assert (await client.post("/pipeline", json={"text": "a b c"})).json() == {"n": 3, "e": 3}


@pytest.mark.parametrize(
    ("path", "body", "status", "match"),
    [
        ("Classifier/scale", {"num_replicas": 0}, 422, "num_replicas=0"),
        ("Classifier/scale", {"num_replicas": 2, "max_batch_size": 3}, 422, "App.scale changes replicas only"),
        ("Classifier/scale", {}, 400, "num_replicas"),
        ("Nope/scale", {"num_replicas": 2}, 404, "has no node"),
        ("embed/update", {"num_gpus": 1}, 422, "Cannot update 'num_gpus' over HTTP"),
        ("embed/update", {"num_replicas": 2}, 422, "Change replicas with .../scale"),
        ("embed/update", {"implementation": "x:Y"}, 422, "swap implementations"),
        ("embed/update", {"max_batch_size": "many"}, 422, "max_batch_size"),
        ("embed/update", {}, 400, "options to change"),
    ],
)
async def test_bad_changes_are_refused_with_a_reason(
    client: httpx.AsyncClient, app: dagserve.App, path: str, body: dict[str, object], status: int, match: str
) -> None:
    r = await client.post(f"{ADMIN_PREFIX}/graphs/pipeline/nodes/{path}", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert match in r.json()["error"]["message"]
    assert app.status().nodes["Classifier"].running_replicas == 2


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}", "more than 100 deep"),  # the ingress's depth bound holds here too
    ],
)
async def test_a_body_that_is_not_a_json_object_is_400(client: httpx.AsyncClient, content: bytes, match: str) -> None:
    r = await client.post(f"{ADMIN_PREFIX}/graphs/pipeline/nodes/Classifier/scale", content=content, headers=AUTH)
    assert r.status_code == 400 and match in r.json()["error"]["message"]


async def test_an_admin_body_over_its_bound_is_413_and_changes_nothing(
    client: httpx.AsyncClient, app: dagserve.App
) -> None:
    body = b'{"num_replicas": 3, "pad": "' + b"x" * (64 * 1024) + b'"}'
    r = await client.post(f"{ADMIN_PREFIX}/graphs/pipeline/nodes/Classifier/scale", content=body, headers=AUTH)
    assert r.status_code == 413 and "at most 65536 bytes" in r.json()["error"]["message"]
    assert app.status().nodes["Classifier"].running_replicas == 2


async def test_bad_wait_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(
        f"{ADMIN_PREFIX}/graphs/pipeline/nodes/Classifier/scale?wait_s=soon", json={"num_replicas": 2}, headers=AUTH
    )
    assert r.status_code == 400 and "wait_s must be a number" in r.json()["error"]["message"]


async def test_scaling_down_drains_in_a_thread_while_the_loop_serves() -> None:
    """Scaling down waits for the dropped replica's requests; meanwhile status and traffic answer."""
    app = dagserve.deploy(make_graph(delay=0.5), backend="local")
    try:
        web = web_app({"pipeline": app}, TOKEN)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://test") as c:
            # Two slow requests occupy both Classifier replicas (each takes the least busy one).
            STARTED.clear()
            slow = [asyncio.ensure_future(c.post("/pipeline", json={"text": "a b"})) for _ in range(2)]
            for _ in range(400):  # bounded: both start within a few loop turns
                if len(STARTED) == 2:
                    break
                await asyncio.sleep(0.005)
            assert len(STARTED) == 2
            order: list[str] = []

            async def scale() -> None:
                r = await c.post(f"{ADMIN_PREFIX}/graphs/pipeline/nodes/Classifier/scale", json={"num_replicas": 1}, headers=AUTH)
                assert r.status_code == 200, r.text
                order.append("scaled")

            async def status() -> None:
                await asyncio.sleep(0.05)  # the scale request is draining by now
                r = await c.get(f"{ADMIN_PREFIX}/status", headers=AUTH)
                assert r.status_code == 200
                order.append("status")

            await asyncio.gather(scale(), status())
            results = await asyncio.gather(*slow)
        assert [r.status_code for r in results] == [200, 200]
        assert order == ["status", "scaled"]
        assert app.status().nodes["Classifier"].running_replicas == 1
    finally:
        app.shutdown()
