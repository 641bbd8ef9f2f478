"""Every example runs end to end: in-process on the local backend, its one command, over real
HTTP (the embedding web app), and the digits ensemble on a real local Ray with a logical GPU."""

from __future__ import annotations

import asyncio
import os
import re
import runpy
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import dagserve

ROOT = Path(__file__).resolve().parent.parent


def gather(app: dagserve.App, payloads: list[Any]) -> list[Any]:
    """Call ``app`` on every payload concurrently (so batched nodes batch)."""

    async def run() -> list[Any]:
        return await asyncio.gather(*(app.acall(p) for p in payloads))

    return asyncio.run(run())


def samples(exposition: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """``(labels, value)`` of each sample of ``metric`` in a Prometheus text exposition."""
    out = []
    for line in exposition.splitlines():
        m = re.fullmatch(rf"{metric}\{{(.*)\}} (\S+)", line)
        if m:
            out.append((dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1))), float(m.group(2))))
    return out


# -- quickstart ----------------------------------------------------------------------------------


def test_quickstart_script_prints_its_answers(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    assert capsys.readouterr().out.splitlines() == [
        "{'label': 'positive', 'score': 0.5, 'flagged': False}",
        "{'label': 'unsupported-language', 'score': 0.0, 'flagged': False}",
    ]


def test_quickstart_has_the_shape_the_readme_describes() -> None:
    from examples.quickstart import graph

    plan = dagserve.compile(graph)
    kinds = {d.name: (d.kind, d.batched, d.options.num_replicas) for d in plan.deployments}
    assert kinds == {
        "clean": ("function", False, 1),
        "Sentiment": ("model", False, 2),
        "Toxicity": ("model", True, 1),
        "respond": ("function", False, 1),
        "not_supported": ("function", False, 1),
    }
    # Fan-out: the cleaned text feeds both models; a switch picks the answer.
    assert {e.target for e in plan.edges if e.source == "clean"} >= {"Sentiment", "Toxicity"}
    assert [s.kind for s in plan.steps].count("switch") == 1


# -- digits ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_app() -> Iterator[dagserve.App]:
    from examples.digits import graph

    with dagserve.deploy(graph, backend="local") as app:
        yield app


def test_digits_ensemble_is_accurate_and_flags_its_mistakes(digits_app: dagserve.App) -> None:
    from examples.digits import holdout

    pairs = holdout()
    results = gather(digits_app, [p for p, _ in pairs])
    wrong = [r for r, (_, y) in zip(results, pairs, strict=True) if r["digit"] != y]
    flagged = [r for r in results if r["needs_review"]]
    assert len(pairs) == 360
    assert len(wrong) / len(pairs) <= 0.05, f"{len(wrong)} of {len(pairs)} held-out digits wrong"
    assert sum(r["needs_review"] for r in wrong) >= 0.8 * len(wrong), "the review rule misses most mistakes"
    assert len(flagged) <= 0.15 * len(pairs), f"{len(flagged)} answers sent to review: the rule is too eager"
    # 360 concurrent requests: the batched model ran batches of more than one image.
    assert max(digits_app.backend.batch_sizes()["NeuralNet"]) > 1


def test_digits_flags_an_ambiguous_image(digits_app: dagserve.App) -> None:
    from examples.digits import holdout

    one = next(p["pixels"] for p, y in holdout() if y == 1)
    seven = next(p["pixels"] for p, y in holdout() if y == 7)
    blend = digits_app.call({"pixels": [(a + b) / 2 for a, b in zip(one, seven, strict=True)]})
    assert blend["needs_review"] is True
    assert blend["reasons"][0].startswith("confidence ")
    assert set(blend["votes"]) == {"logistic", "knn", "neural_net"}


def test_digits_rejects_a_malformed_image(digits_app: dagserve.App) -> None:
    with pytest.raises(dagserve.InputValidationError, match=r"does not match DigitImage: 1 error\(s\) at pixels"):
        digits_app.call({"pixels": [0.0] * 63})
    with pytest.raises(dagserve.InputValidationError, match=r"at pixels\.3"):
        digits_app.call({"pixels": [0.0] * 3 + [17.0] + [0.0] * 60})


def test_digits_declares_replicas_batching_and_a_gpu_share() -> None:
    from examples.digits import graph

    spec = dagserve.compile(graph).deployment("NeuralNet")
    assert spec.options.in_force() == {
        "num_replicas": 2,
        "max_batch_size": 32,
        "batch_wait_timeout_s": 0.005,
        "num_gpus": 0.25,
    }


def test_digits_command_prints_a_report(capsys: pytest.CaptureFixture[str]) -> None:
    from examples.digits.__main__ import main

    main(["-n", "30"])
    out = capsys.readouterr().out
    assert out.startswith("true  answer  confidence  review\n")
    assert re.search(r"accuracy (\d+)/30 = [\d.]+%; \d+ flagged for review", out)
    right = int(re.search(r"accuracy (\d+)/30", out).group(1))  # type: ignore[union-attr]
    assert right >= 27


# -- text routing ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_app() -> Iterator[dagserve.App]:
    from examples.text_routing import graph

    with dagserve.deploy(graph, backend="local") as app:
        yield app


@pytest.mark.parametrize(
    ("text", "language", "sentiment"),
    [
        ("The staff was friendly and the food was great", "en", "positive"),
        ("Das Essen war kalt und das Personal unfreundlich", "de", "negative"),
        ("Le film était merveilleux, j'ai adoré", "fr", "positive"),
        ("El servicio fue terrible y muy lento", "es", "negative"),
    ],
)
def test_text_routing_sends_each_language_to_its_model(
    text_app: dagserve.App, text: str, language: str, sentiment: str
) -> None:
    ctx = dagserve.RequestContext()
    answer = asyncio.run(text_app.acall({"text": text}, context=ctx))
    assert answer["language"] == language
    assert answer["sentiment"] == sentiment
    assert answer["model_version"] in {f"{language}-v1", "en-v2"}
    # Only the chosen branch ran: no other language's model was called.
    ran = {name for name in ctx.timings if name.startswith("sentiment_")}
    assert ran <= {f"sentiment_{language}", "sentiment_en_v2"} and len(ran) == 1
    assert ctx.route["language"] == repr(language)


def test_text_routing_answers_unknown_languages_without_a_model(text_app: dagserve.App) -> None:
    ctx = dagserve.RequestContext()
    answer = asyncio.run(text_app.acall({"text": "Hyvää päivää kaikille"}, context=ctx))
    assert answer == {"language": "unknown", "sentiment": "unsupported", "score": None, "model_version": None,
                      "needs_review": False}
    assert ctx.route == {"language": "default"}
    assert not any(name.startswith("sentiment_") for name in ctx.timings)


def test_text_routing_canary_gets_a_tenth_of_english_traffic_visible_in_metrics(text_app: dagserve.App) -> None:
    from dagserve.observe.metrics import Metrics, instrument

    metrics = Metrics()  # a private registry: counts only what this test sends
    instrument(text_app, metrics)
    n = 1000
    answers = gather(text_app, [{"text": "What a great film, I loved it"}] * n)
    versions = Counter(a["model_version"] for a in answers)
    # 10 % of 1000 is 100 with a standard deviation of about 9.5: accept 4 deviations either way.
    assert 62 <= versions["en-v2"] <= 138, versions
    assert versions["en-v1"] + versions["en-v2"] == n
    routes = {
        labels["branch"]: value
        for labels, value in samples(metrics.render().decode(), "dagserve_route_total")
        if labels["node"] == "english_canary"
    }
    assert routes == {"stable": versions["en-v1"], "canary": versions["en-v2"]}


def test_text_routing_command_prints_languages_and_the_canary_share(capsys: pytest.CaptureFixture[str]) -> None:
    from examples.text_routing.__main__ import main

    main(["-n", "200"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:5]] == ["en", "de", "fr", "es", "unknown"]
    assert re.fullmatch(r"canary: \d+ of 200 English requests answered by en-v2 \(.*\), \d+ by en-v1", lines[5])


# -- embedding web app -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.http
def test_embedding_app_command_serves_its_routes_and_the_mounted_graph() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.embedding_app", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "server exited"
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the embedding app did not start within 60 s"
                time.sleep(0.2)
        assert health.json() == {"ok": True, "documents": 24}

        found = httpx.get(f"{base}/search", params={"q": "coffee with milk", "k": 2}, timeout=10).json()
        assert found["results"][0]["document"] == "A latte is espresso with steamed milk"
        assert len(found["results"]) == 2
        assert httpx.get(f"{base}/search", timeout=10).status_code == 400

        embedded = httpx.post(f"{base}/embed/", json={"text": "coffee with milk"}, timeout=10)
        assert embedded.status_code == 200
        assert embedded.json()["dimensions"] == 12
        vector = embedded.json()["embedding"]
        assert abs(sum(x * x for x in vector) - 1) < 1e-3  # unit length

        bad = httpx.post(f"{base}/embed/", json={"text": ""}, timeout=10)
        assert bad.status_code == 422
        assert bad.json()["error"]["type"] == "InputValidationError"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


# -- the digits ensemble on Ray ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    from ray import serve

    # Ray's worker processes import the example's classes by module name: put the repository on
    # their path. One logical GPU lets NeuralNet's two 0.25-GPU replicas schedule here.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved) if p)
    ray.init(address="local", include_dashboard=False, num_cpus=2, num_gpus=1)
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.mark.ray
def test_digits_on_ray_gives_the_same_answers_as_in_process(ray_session: None, digits_app: dagserve.App) -> None:
    from examples.digits import graph, holdout

    payloads = [p for p, _ in holdout(40)]
    expected = gather(digits_app, payloads)
    with dagserve.deploy(graph, backend="ray") as app:
        status = app.status()
        assert status.ready
        assert status.nodes["NeuralNet"].running_replicas == 2
        assert status.nodes["NeuralNet"].options["num_gpus"] == 0.25
        assert gather(app, payloads) == expected


# -- detect_classify (issue 18: handles) ------------------------------------------------------------


def test_detect_classify_classifies_crops_through_a_batched_handle_and_retries_unsure_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from examples.detect_classify import graph as dc
    from examples.detect_classify.__main__ import main

    plan = dagserve.compile(dc.graph)
    assert plan.calls == (("Annotator", "Classifier"), ("Annotator", "Sharpen"))
    main([])
    assert capsys.readouterr().out.splitlines() == [
        "  dots and a bar: dot (1.00, 1 tr), bar (1.00, 1 tr), dot (1.00, 1 tr)",
        "        a square: square (1.00, 1 tr)",
        " a ragged square: square (1.00, 2 tr)",
    ]
    with dagserve.deploy(dc.graph, backend="local") as app:
        image = [[1, 0] * 4] * 1  # four dots: four concurrent handle calls to the batched classifier
        assert [o["label"] for o in app.call({"pixels": image})["objects"]] == ["dot"] * 4
        assert max(app.backend.batch_sizes()["Classifier"]) > 1


# -- qa_stream ----------------------------------------------------------------------------------------


@pytest.mark.http
def test_qa_stream_answers_from_the_right_passage_token_by_token() -> None:
    from examples.qa_stream import graph
    from tests.background_server import BackgroundServer

    with dagserve.deploy(graph, backend="local") as app:
        assert app.streams
        tokens = list(app.stream({"question": "How do bees make honey?"}))
        assert len(tokens) > 5 and "".join(tokens).startswith("Bees make honey")
        with BackgroundServer(app.asgi()) as url:
            r = httpx.post(url, json={"question": "Why is the moon red during a lunar eclipse?", "max_tokens": 8})
            events = r.text.split("\n\n")
            assert r.headers["content-type"].startswith("text/event-stream")
            assert events[0] == 'data: "A "' and events[-2] == "event: end\ndata: {}"
            assert len(events) - 2 == 8  # max_tokens data events, end, and the empty tail


def test_qa_stream_command_prints_answers(capsys: pytest.CaptureFixture[str]) -> None:
    from examples.qa_stream.__main__ import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.count("Q: ") == 3 and "first token after" in out


# -- tenants ---------------------------------------------------------------------------------------


def test_tenants_command_prints_what_it_prints_in_the_docs(capsys: pytest.CaptureFixture[str]) -> None:
    from examples.tenants.__main__ import main

    main([])
    out = capsys.readouterr().out
    page = (Path(__file__).resolve().parent.parent / "docs" / "multiplexing.md").read_text()
    shown = page.split("$ python -m examples.tenants\n", 1)[1].split("```", 1)[0]
    assert out == shown


def test_tenants_reads_the_customer_from_the_header_and_refuses_an_unknown_one() -> None:
    import httpx

    from examples.tenants import graph, holdout

    from .background_server import BackgroundServer

    payload, digit = holdout(1)[0]
    with dagserve.deploy(graph, backend="local") as app, BackgroundServer(app.asgi()) as url:
        bare = {"pixels": payload["pixels"]}
        r = httpx.post(url, json=bare, headers={"x-dagserve-model-id": "hooli"})
        assert r.status_code == 200 and r.json()["customer"] == "hooli" and r.json()["digit"] == digit
        r = httpx.post(url, json={**bare, "customer": "nobody"})
        assert r.status_code == 404 and "No model for customer 'nobody'" in r.text
