"""Operating a live graph on a real local Ray: scale, update and swap one node under steady load
with zero failed requests and the other nodes' replicas untouched; metrics from Ray replicas;
the CLI against a server whose graph runs on Ray."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

import dagserve
from dagserve.cli.main import main
from dagserve.http.settings import ADMIN_TOKEN_ENV
from dagserve.observe.metrics import Metrics
from tests.background_server import BackgroundServer

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

TOKEN = "ray-ops-token"


@dagserve.node
def tokenize(text: str) -> list[str]:
    return text.split()


@dagserve.node
class Classifier:
    def __init__(self, model: str = "v1") -> None:
        self.model = model

    async def __call__(self, words: list[str]) -> dict[str, Any]:
        await asyncio.sleep(0.005)  # a little work, so requests are in flight while replicas change
        return {"n": len(words), "model": self.model}


class ClassifierV2:
    """The replacement implementation (same method, new 'weights')."""

    def __init__(self, model: str = "v2") -> None:
        self.model = model

    async def __call__(self, words: list[str]) -> dict[str, Any]:
        await asyncio.sleep(0.005)
        return {"n": len(words), "model": self.model}


@dagserve.node(max_batch_size=4, batch_wait_timeout_s=0.005)
async def embed(batch: list[list[str]]) -> list[int]:
    return [len(words) for words in batch]


def ops_graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        words = tokenize(inp["text"])
        out = {"cls": Classifier()(words), "e": embed(words)}
    return dagserve.Graph(out, name="ray_ops")


@pytest.fixture(scope="module")
def ray_app(shared_ray: None) -> Iterator[dagserve.App]:
    app = dagserve.deploy(ops_graph(), backend="ray")
    try:
        yield app
    finally:
        app.shutdown()


class Load:
    """Steady traffic from ``threads`` client threads until stopped (bounded by ``max_s``)."""

    def __init__(self, app: dagserve.App, *, threads: int = 2, max_s: float = 90.0) -> None:
        self.app = app
        self.ok = 0
        self.failures: list[BaseException] = []
        self.models: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_s
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, worker: int) -> None:
        i = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            i += 1
            words = " ".join(["w"] * (1 + (worker + i) % 5))
            try:
                out = self.app.call({"text": words}, timeout_s=30)
                if out["e"] != len(words.split()) or out["cls"]["n"] != len(words.split()):
                    raise AssertionError(f"wrong answer {out!r} for {words!r}")
            except BaseException as exc:  # every failure is a test failure; keep them all
                with self._lock:
                    self.failures.append(exc)
            else:
                with self._lock:
                    self.ok += 1
                    self.models[out["cls"]["model"]] += 1
            time.sleep(0.002)  # steady, not flooding: other engineers share these two cores

    def wait_for(self, more: int, timeout_s: float = 30.0) -> None:
        """Until ``more`` further requests succeeded (bounded)."""
        target = self.ok + more
        deadline = time.monotonic() + timeout_s
        while self.ok < target and time.monotonic() < deadline and not self.failures:
            time.sleep(0.01)
        assert not self.failures, self.failures[:3]
        assert self.ok >= target, f"only {self.ok} requests succeeded; wanted {target}"

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def ids(app: dagserve.App) -> dict[str, tuple[str, ...]]:
    return {name: node.replica_ids for name, node in app.status().nodes.items()}


def test_scale_up_and_down_under_load(ray_app: dagserve.App) -> None:
    before = ids(ray_app)
    assert len(before["Classifier"]) == 1
    with Load(ray_app) as load:
        load.wait_for(20)
        ray_app.scale("Classifier", num_replicas=3)
        up = ray_app.status().nodes["Classifier"]
        assert (up.target_replicas, up.running_replicas) == (3, 3)
        during = ids(ray_app)
        assert set(before["Classifier"]) < set(during["Classifier"])  # the first replica stays
        load.wait_for(20)
        ray_app.scale("Classifier", num_replicas=1)
        down = ray_app.status().nodes["Classifier"]
        assert (down.target_replicas, down.running_replicas) == (1, 1)
        load.wait_for(20)
    after = ids(ray_app)
    assert load.failures == []
    assert set(after["Classifier"]) <= set(during["Classifier"])
    for other in ("tokenize", "embed"):
        assert before[other] == during[other] == after[other], other


def test_option_update_under_load(ray_app: dagserve.App) -> None:
    before = ids(ray_app)
    with Load(ray_app) as load:
        load.wait_for(20)
        ray_app.update("embed", max_batch_size=8, batch_wait_timeout_s=0.002)
        load.wait_for(20)
    assert load.failures == []
    status = ray_app.status().nodes["embed"]
    assert status.options == {"max_batch_size": 8, "batch_wait_timeout_s": 0.002}
    after = ids(ray_app)
    for other in ("tokenize", "Classifier"):
        assert after[other] == before[other], other


def test_implementation_swap_under_load(ray_app: dagserve.App) -> None:
    before = ids(ray_app)
    with Load(ray_app) as load:
        load.wait_for(20)
        ray_app.update("Classifier", implementation=ClassifierV2)
        answered_v2 = ray_app.call({"text": "a b"})["cls"]["model"]
        load.wait_for(20)
    assert load.failures == []
    assert answered_v2 == "v2"  # every request after update() returns runs the new code
    assert load.models["v1"] > 0 and load.models["v2"] > 0
    after = ids(ray_app)
    assert not set(after["Classifier"]) & set(before["Classifier"])  # new replicas for new code
    for other in ("tokenize", "embed"):
        assert after[other] == before[other], other


def _samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_metrics_count_ray_traffic_and_batches(ray_app: dagserve.App) -> None:
    metrics = Metrics()
    metrics.instrument(ray_app)
    graph = {"graph": "ray_ops"}

    def get(m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
        return m.get((name, frozenset({**graph, **labels}.items())), 0.0)

    before = _samples(metrics)

    async def burst() -> None:
        await asyncio.gather(*(ray_app.acall({"text": "x " * (1 + i % 3)}) for i in range(12)))

    asyncio.run(burst())
    for _ in range(3):
        ray_app.call({"text": "one more"})
    with pytest.raises(dagserve.RequestError):
        ray_app.call({"no_text": 1})
    after = _samples(metrics)
    assert get(after, "dagserve_requests_total", outcome="ok", protocol="python") == 15
    assert get(after, "dagserve_requests_total", outcome="client_error", protocol="python") == 1
    for node in ("tokenize", "Classifier", "embed"):
        assert get(after, "dagserve_node_latency_seconds_count", node=node) == 15, node
    # Batch sizes come from the embed replica(s): every call was one item of some batch.
    ran = get(after, "dagserve_batch_size_sum", node="embed") - get(before, "dagserve_batch_size_sum", node="embed")
    assert ran == 15
    batches = get(after, "dagserve_batch_size_count", node="embed") - get(before, "dagserve_batch_size_count", node="embed")
    assert 1 <= batches <= 15
    status = ray_app.status().nodes
    for node in ("tokenize", "Classifier", "embed"):
        assert get(after, "dagserve_replicas", node=node, state="running") == status[node].running_replicas


def test_cli_scales_a_ray_graph_behind_a_real_server(ray_app: dagserve.App) -> None:
    before = ids(ray_app)
    runner = CliRunner()
    with BackgroundServer(dagserve.asgi_app(ray_app, admin_token=TOKEN, token="")) as url, Load(ray_app) as load:
        load.wait_for(10)
        done = runner.invoke(
            main, ["scale", "ray_ops", "Classifier", "--replicas", "2", "--url", url], env={ADMIN_TOKEN_ENV: TOKEN}, terminal_width=120
        )
        assert done.exit_code == 0, done.output
        assert "2/2/0" in done.output
        status = runner.invoke(main, ["status", "--url", url], env={ADMIN_TOKEN_ENV: TOKEN}, terminal_width=120)
        assert status.exit_code == 0, status.output
        assert "ray_ops (ray, ready)" in status.output
        load.wait_for(10)
    assert load.failures == []
    after = ids(ray_app)
    assert len(after["Classifier"]) == 2
    for other in ("tokenize", "embed"):
        assert after[other] == before[other], other
