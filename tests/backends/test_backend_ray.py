"""The Ray Serve backend on a real local Ray (one per module, with one logical GPU)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import dagserve
from benchmarks.chaos import descendants
from dagserve import DeployError, NodeError, OverloadedError, RequestTimeoutError
from dagserve.backends.ray.header import CallHeader
from dagserve.backends.ray.transports import ServeTransport
from dagserve.app import App
from dagserve.backends.ray import serve_options
from dagserve.backends.ray.backend import RayBackend
from dagserve.backends.ray.cluster import start_local_ray, token_auth_enabled
from dagserve.backends.ray.direct.frames import FRAME_LENGTH
from dagserve.backends.ray.proxy import INGRESS_DEPLOYMENT, free_port
from dagserve.backends.ray.serve_options import deployment_options
from dagserve.runtime.sync_calls import PROMOTE_AFTER

from .. import example_graphs as eg
from ..foreign_peer import foreign_socket, needs_root

ray_test = pytest.mark.ray  # integration tests on the module's Ray; the others need no Ray


# -- nodes ------------------------------------------------------------------------------------------


@dagserve.node(max_batch_size=8, batch_wait_timeout_s=0.01)
async def batch_size(xs: list[int]) -> list[int]:
    """Answers each request with the size of the batch it ran in (a batch holds the node 0.2 s)."""
    await asyncio.sleep(0.2)
    return [len(xs)] * len(xs)


@dagserve.node(num_replicas=2)
class Who:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __call__(self, x: int) -> dict[str, Any]:
        return {"tag": self.tag, "pid": os.getpid(), "rid": dagserve.current_request_id(), "x": x}


@dagserve.node
def blocking(x: int, seconds: float) -> list[Any]:
    start = time.time()
    if seconds:  # time.sleep(0) would still give up the GIL, which the sync-call policy counts as blocking
        time.sleep(seconds)
    return [threading.current_thread().name, start, time.time()]


@dagserve.node(inline=True)
def here(x: int) -> int:
    return os.getpid()


@dagserve.node(max_ongoing_requests=1, max_queued_requests=1)
async def narrow(x: int) -> int:
    await asyncio.sleep(0.5)
    return x


@dagserve.node(timeout_s=0.5)
async def sleeper(x: int, path: str) -> int:
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        Path(path).write_text("cancelled")
        raise
    return x


@dagserve.node(num_gpus=0.25, num_replicas=4)
class OnGpu:
    def __call__(self, x: int) -> int:
        return x


@dagserve.node(num_gpus=0.25)
def fifth(x: int) -> int:
    return x


@dagserve.node
def add_one(x: int) -> int:
    return x + 1


@dagserve.node
class Times:
    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, x: int) -> int:
        return x * self.k


@dagserve.node(max_ongoing_requests=2)
class Peak:
    """Answers with the most calls it has seen running at once (each holds it 0.5 s)."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0

    async def __call__(self, x: int) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(0.5)
            return self.peak
        finally:
            self.running -= 1


@dagserve.node(num_replicas=2)
def where(x: int) -> tuple[int, float]:
    """Which replica process ran the call, and when it started."""
    return os.getpid(), time.time()


@dagserve.node
def blob(n: int) -> bytes:
    return b"x" * n


@dagserve.node
def size_of(data: bytes) -> int:
    return len(data)


def features(cancel_marker: Path) -> dagserve.Graph:
    with dagserve.Input() as inp:
        x = inp["x"]
        out = dagserve.switch(
            inp["case"],
            {
                "batch": batch_size(x),
                "who": Who("a")(x),
                "who_b": Who("b")(x),
                "block": [blocking(x, 0.3), blocking(x, 0.3)],
                "sleep": blocking(x, inp["s"]),
                "inline": here(x),
                "narrow": narrow(x),
                "timeout": sleeper(x, str(cancel_marker)),
            },
        )
    return dagserve.Graph(out, name="features")


def chain() -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = Times(2)(add_one(inp))
    return dagserve.Graph(out, name="scaling")


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    start_local_ray(num_cpus=2, num_gpus=1)
    from ray import serve

    # With Serve's HTTP proxy (on loopback, a free port), for the ingress_replicas test.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": free_port()})
    yield
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray") / "cancelled"


@pytest.fixture(scope="module")
def app(ray_instance: None, marker: Path) -> Iterator[dagserve.App]:
    with dagserve.deploy(features(marker), backend="ray", ready_timeout_s=180) as app:
        yield app


def serve_apps() -> set[str]:
    from ray import serve

    return set(serve.status().applications)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


# -- mapping (no Ray needed) ------------------------------------------------------------------------


def test_options_map_onto_serve_deployment_options() -> None:
    spec = dagserve.compile(
        dagserve.Graph(
            add_one.options(
                num_cpus=0.5,
                num_gpus=0.25,
                memory=2**30,
                resources={"second": 1},
                max_queued_requests=7,
                autoscaling={"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4, "upscale_delay_s": 2},
            ),
            name="m",
        )
    ).deployment("add_one")
    opts = deployment_options(spec)
    assert opts["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.25, "memory": 2**30, "resources": {"second": 1}}
    assert opts["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 4.0,
        "upscale_delay_s": 2.0,
    }
    assert "num_replicas" not in opts
    assert opts["max_queued_requests"] == 7 and opts["max_ongoing_requests"] == 100
    batched = dagserve.compile(dagserve.Graph(batch_size.options(max_batch_size=64), name="b")).deployment("batch_size")
    plain = deployment_options(batched)
    assert plain["num_replicas"] == 1 and plain["max_ongoing_requests"] == 128  # room for two full batches
    assert plain["ray_actor_options"] == {"num_cpus": 0.0}


def test_inline_sync_option_reaches_the_replicas() -> None:
    def spec(**options: Any) -> Any:
        return serve_options.replica_spec(
            dagserve.compile(dagserve.Graph(add_one.options(**options), name="s")).deployment("add_one")
        )

    assert [spec().inline_sync, spec(inline_sync=True).inline_sync, spec(inline_sync=False).inline_sync] == [None, True, False]


def test_pending_replicas_are_explained_and_infeasible_requests_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagserve.backends.ray.serve_status import _Resources, problems

    one_gpu = {"node": {"CPU": 2.0, "GPU": 1.0}}
    full = _Resources(one_gpu, {"node": {"CPU": 2.0, "GPU": 0.0}})
    quarter = {"CPU": 0, "GPU": 0.25}
    assert full.infeasible(quarter) is None and not full.has_room(quarter)
    assert full.why_pending(quarter).startswith("no Ray node has a free 0.25 GPU (1 of 1 in use")
    assert full.infeasible({"GPU": 2}) == (
        "no Ray node has 2 GPU at all (the largest has 1); add a node that has it, or lower the node's request"
    )
    assert "no Ray node has 1 of resource 'tpu' at all" in str(full.infeasible({"tpu": 1}))
    # An autoscaler that can add a node type with 2 GPUs: worth waiting for.
    scaling = _Resources(one_gpu, one_gpu, [{"CPU": 8.0, "GPU": 2.0}])
    assert scaling.infeasible({"GPU": 2}) is None
    assert scaling.why_pending({"GPU": 2}) == "no Ray node has 2 GPU yet; waiting for the autoscaler to add one that has"

    def details(*replicas: tuple[str, str | None]) -> dict[str, Any]:
        reps = [{"replica_id": f"r{i}", "state": st, "node_id": node} for i, (st, node) in enumerate(replicas)]
        dep = {"status": "UPDATING", "target_num_replicas": len(reps), "replicas": reps, "required_resources": quarter}
        return {"applications": {"g": {"deployments": {"OnGpu": dep}}}}

    monkeypatch.setattr(_Resources, "read", classmethod(lambda cls: full))
    waiting = details(("RUNNING", "n"), ("STARTING", None))  # the second one has no room
    assert problems(waiting, "g", ["OnGpu"], set(), {}, serving=True) == {}
    assert problems(waiting, "g", ["OnGpu"], set(), {})["OnGpu"].startswith("1 of 2 replicas running")
    starting = details(("RUNNING", "n"), ("STARTING", "n"), ("STARTING", None))  # one is being built
    assert "OnGpu" in problems(starting, "g", ["OnGpu"], set(), {}, serving=True)
    none_yet = details(("STARTING", None))
    assert "OnGpu" in problems(none_yet, "g", ["OnGpu"], set(), {}, serving=True)
    monkeypatch.setattr(_Resources, "read", classmethod(lambda cls: _Resources(one_gpu, one_gpu)))
    assert "OnGpu" in problems(waiting, "g", ["OnGpu"], set(), {}, serving=True)  # room: it is being placed


# -- one deployed graph -----------------------------------------------------------------------------


@ray_test
def test_status_reports_every_node_with_replicas_and_options(app: dagserve.App) -> None:
    status = app.status()
    assert status.ready and status.backend == "ray"
    assert set(status.nodes) == {"batch_size", "Who", "Who_2", "blocking", "here", "narrow", "sleeper"}
    who = status.nodes["Who"]
    assert who.running_replicas == who.target_replicas == 2 and len(who.replica_ids) == 2
    assert who.options == {"num_replicas": 2} and who.state == "RUNNING" and who.kind == "model"
    assert status.nodes["Who_2"].replica_ids != who.replica_ids  # same class, other arguments
    assert status.nodes["here"].inline and status.nodes["here"].running_replicas == 1
    assert status.nodes["narrow"].options == {"max_ongoing_requests": 1, "max_queued_requests": 1}
    # A Ray started here: its processes inherited Serve's settings, no runtime_env carries them.
    assert status.settings["replica_env"]["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert len(status.settings["caller"]["router_retry_backoff_s"]) == 2  # read by Serve in this process
    assert app.backend._runtime_env == {}  # type: ignore[attr-defined]


@ray_test
def test_batches_form_under_concurrency(app: dagserve.App) -> None:
    async def many() -> list[int]:
        return await asyncio.gather(*(app.acall({"case": "batch", "x": i}) for i in range(24)))

    sizes = asyncio.run(many())
    assert max(sizes) > 1 and max(sizes) <= 8
    counts = app.backend.batch_sizes()["batch_size"]
    assert sum(size * n for size, n in counts.items()) >= 24


@ray_test
def test_batches_grow_while_the_previous_batch_runs(app: dagserve.App) -> None:
    """Requests trickling in while a batch holds the node wait for it and then go together.

    Serve's own ``serve.batch`` (2.60) would close a batch every ``batch_wait_timeout_s`` (10 ms)
    and queue those behind the running one: 16 arrivals 10 ms apart would run as ~16 batches of 1.
    """

    async def trickle() -> list[int]:
        calls = []
        for i in range(16):
            calls.append(asyncio.ensure_future(app.acall({"case": "batch", "x": i})))
            await asyncio.sleep(0.01)
        return await asyncio.gather(*calls)

    sizes = asyncio.run(trickle())
    assert max(sizes) == 8  # a full batch formed behind the first one
    assert len(sizes) - sizes.count(1) >= 12  # most requests shared a batch


@ray_test
def test_requests_spread_over_replicas_in_other_processes(app: dagserve.App) -> None:
    async def many(case: str) -> list[dict[str, Any]]:
        return await asyncio.gather(*(app.acall({"case": case, "x": i}) for i in range(40)))

    answers = asyncio.run(many("who"))
    pids = {a["pid"] for a in answers}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {a["tag"] for a in answers} == {"a"}
    assert {a["tag"] for a in asyncio.run(many("who_b"))} == {"b"}


@ray_test
def test_request_id_reaches_node_code(app: dagserve.App) -> None:
    assert app.call({"case": "who", "x": 1}, request_id="req-42")["rid"] == "req-42"


@ray_test
def test_sync_node_code_runs_in_the_replica_thread_pool(app: dagserve.App) -> None:
    answers = app.call({"case": "block", "x": 1})
    assert eg.overlapped([a[1:] for a in answers])  # both sleeps overlapped in one replica
    assert all(a[0].startswith("dagserve-blocking") for a in answers)


def _sync_modes(app: dagserve.App, node: str) -> dict[str, str]:
    """The node's replica's sync-call policy state (one replica), through the backend's own Serve
    handle (the backend closes it), on the App's home loop where that handle's router runs."""

    async def ask() -> dict[str, str]:
        handle = app.backend._serve_handles.transport(app.name, node).handle  # type: ignore[attr-defined]
        return await handle.options(method_name="dagserve_sync_modes").remote()  # type: ignore[no-any-return]

    return asyncio.run_coroutine_threadsafe(ask(), app._loop).result(timeout=30)  # type: ignore[arg-type]


@ray_test
def test_a_fast_sync_node_goes_inline_in_its_replica_and_a_slow_call_never_blocks_it_for_long(
    app: dagserve.App,
) -> None:
    """As on the local backend: slow from the start, on threads while other calls are answered;
    proven fast, inline on the replica's loop; slow once inline, back on threads at once."""

    def sleep(s: float) -> list[Any]:
        return app.call({"case": "sleep", "x": 1, "s": s})  # type: ignore[no-any-return]

    async def slow_beside_fast() -> tuple[list[Any], list[Any]]:
        slow = asyncio.ensure_future(app.acall({"case": "sleep", "x": 1, "s": 0.6}))
        await asyncio.sleep(0.12)
        fast = await app.acall({"case": "sleep", "x": 2, "s": 0.0})
        return await slow, fast

    slow, fast = asyncio.run(slow_beside_fast())
    assert slow[0].startswith("dagserve-blocking") and fast[2] < slow[2]  # answered while it slept
    for _ in range(20 * PROMOTE_AFTER):  # bounded: a loaded machine may make a few calls look slow
        loop_thread = sleep(0.0)[0]
        if not loop_thread.startswith("dagserve-blocking"):
            break
    else:
        raise AssertionError(f"blocking still {_sync_modes(app, 'blocking')} after {20 * PROMOTE_AFTER} fast calls")
    assert _sync_modes(app, "blocking") == {"__call__": "inline"}
    assert sleep(0.2)[0] == loop_thread  # the first slow call cannot be foreseen: it ran inline
    assert _sync_modes(app, "blocking") == {"__call__": "probing"}
    slow, fast = asyncio.run(slow_beside_fast())
    assert slow[0].startswith("dagserve-blocking") and fast[2] < slow[2]


@ray_test
def test_inline_node_runs_in_the_ingress_process(app: dagserve.App) -> None:
    assert app.call({"case": "inline", "x": 1}) == os.getpid()


@ray_test
def test_full_queue_is_rejected_as_overloaded(app: dagserve.App) -> None:
    async def burst() -> list[Any]:
        return await asyncio.gather(*(app.acall({"case": "narrow", "x": i}) for i in range(6)), return_exceptions=True)

    results = asyncio.run(burst())
    rejected = [r for r in results if isinstance(r, OverloadedError)]
    assert rejected and any(isinstance(r, int) for r in results)
    assert all(r.node == "narrow" and r.status_code == 503 for r in rejected)
    assert "max_queued_requests=1" in str(rejected[0])


@ray_test
def test_node_timeout_cancels_the_remote_call(app: dagserve.App, marker: Path) -> None:
    with pytest.raises(RequestTimeoutError, match=r"Node 'sleeper' did not answer within its timeout_s=0\.5") as info:
        app.call({"case": "timeout", "x": 1})
    assert info.value.node == "sleeper" and info.value.status_code == 504
    wait_until(marker.exists, 10, "the replica to see its call cancelled")


# -- GPUs, readiness and failures ---------------------------------------------------------------------


@ray_test
def test_fractional_gpus_pack_four_to_a_gpu_and_a_fifth_is_reported_pending(ray_instance: None) -> None:
    with dagserve.Input() as inp:
        four = dagserve.Graph(OnGpu()(inp), name="gpus")
    # A replica that never started holds its removal for the graceful-shutdown period: keep it short.
    quick = {"graceful_shutdown_timeout_s": 1.0}
    with dagserve.deploy(four, backend="ray", ready_timeout_s=120, **quick) as app:
        # deploy returns once the node serves (one replica runs); the other three may still start.
        wait_until(lambda: app.status().nodes["OnGpu"].running_replicas == 4, 120, "four 0.25 GPU replicas to run")
        node = app.status().nodes["OnGpu"]
        assert node.running_replicas == 4 and node.options == {"num_replicas": 4, "num_gpus": 0.25}
        assert app.call(3) == 3

        with dagserve.Input() as inp:
            one_more = dagserve.Graph(fifth(inp), name="fifth")
        with pytest.raises(DeployError, match=r"node\(s\) 'fifth' not ready .*no Ray node has a free 0\.25 GPU"):
            dagserve.deploy(one_more, backend="ray", ready_timeout_s=3, **quick)
        wait_until(lambda: "fifth" not in serve_apps(), 30, "the failed graph to be removed")

        with pytest.raises(DeployError, match=r"'OnGpu' not ready"):
            app.scale("OnGpu", num_replicas=5, wait_s=3)
        node = app.status().nodes["OnGpu"]
        assert node.running_replicas == 4 and node.pending_replicas == 1
        assert node.pending_reason is not None and "no Ray node has a free 0.25 GPU" in node.pending_reason
        app.scale("OnGpu", num_replicas=4, wait_s=60)
        assert app.status().ready
    assert "gpus" not in serve_apps()


@ray_test
def test_deploy_returns_once_every_node_runs_and_an_infeasible_request_fails_at_once(
    ray_instance: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Five 0.25 GPU replicas on one logical GPU: deploy serves with four and reports the fifth
    pending, well before its generous ready timeout. A request no Ray node can ever hold fails
    at once (a wait could not help), naming the node and the resource."""
    with dagserve.Input() as inp:
        five = dagserve.Graph(OnGpu.options(num_replicas=5)()(inp), name="five")
    quick = {"graceful_shutdown_timeout_s": 1.0}  # a replica that never started is removed quickly
    with caplog.at_level("WARNING", logger="dagserve.ray"):
        app = dagserve.deploy(five, backend="ray", ready_timeout_s=600, **quick)
    with app:
        node = app.status().nodes["OnGpu"]
        assert (node.running_replicas, node.pending_replicas, node.target_replicas) == (4, 1, 5)
        assert node.pending_reason is not None and "no Ray node has a free 0.25 GPU" in node.pending_reason
        assert "node 'OnGpu' runs 4 of 5 replicas; 1 pending: no Ray node has a free 0.25 GPU" in caplog.text
        assert app.call(7) == 7
        # It serves, so it is ready to take traffic; the replica waiting for room is listed.
        status = app.status()
        assert status.serving and not status.ready
        assert status.pending["OnGpu"]["pending_replicas"] == 1 and "0.25 GPU" in status.pending["OnGpu"]["reason"]

        async def ready() -> Any:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.asgi()), base_url="http://t") as c:
                return await c.get("/-/ready")

        answer = asyncio.run(ready())
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["ready"] is True and body["pending"]["five"]["OnGpu"]["pending_replicas"] == 1

    for options, resource in (({"num_gpus": 2}, "2 GPU"), ({"resources": {"tpu": 1}}, "1 of resource 'tpu'")):
        with dagserve.Input() as inp:
            big = dagserve.Graph(add_one.options(name="big", **options)(inp), name="infeasible")
        with pytest.raises(
            DeployError,
            match=rf"Graph 'infeasible' could not be deployed on Ray: node 'big': each replica asks for {resource}, "
            rf"and no Ray node has {resource} at all",
        ):
            dagserve.deploy(big, backend="ray", ready_timeout_s=600, **quick)
        wait_until(lambda: "infeasible" not in serve_apps(), 30, "the failed graph to be removed")


@ray_test
def test_constructor_failure_is_a_deploy_error_naming_the_node(ray_instance: None) -> None:
    @dagserve.node
    class Broken:
        def __init__(self) -> None:
            raise FileNotFoundError("weights.bin")

        def __call__(self, x: int) -> int:
            return x

    with dagserve.Input() as inp:
        g = dagserve.Graph(Broken()(inp), name="broken")
    with pytest.raises(
        DeployError, match=r"Node 'Broken' failed to start: its __init__ raised FileNotFoundError: weights\.bin"
    ):
        dagserve.deploy(g, backend="ray", ready_timeout_s=120)


# -- operating ------------------------------------------------------------------------------------


@ray_test
def test_scale_and_update_touch_one_node_only(ray_instance: None) -> None:
    # Also the object-reference transport: add_one's result goes to Times as a reference.
    with dagserve.deploy(chain(), backend="ray", ready_timeout_s=120, pass_by_reference=True) as app:
        assert app.call(1) == 4
        assert app.backend._serve_handles.transport(app.name, "add_one").handle.handle_options._by_reference  # type: ignore[attr-defined]
        before = app.status().nodes
        app.scale("Times", num_replicas=2)
        after = app.status().nodes
        assert after["Times"].running_replicas == 2
        assert set(before["Times"].replica_ids) < set(after["Times"].replica_ids)  # the old one kept
        assert after["add_one"].replica_ids == before["add_one"].replica_ids
        app.scale("Times", num_replicas=1)  # drains one
        scaled_down = app.status().nodes
        assert scaled_down["Times"].running_replicas == 1 and len(scaled_down["Times"].replica_ids) == 1
        assert scaled_down["add_one"].replica_ids == before["add_one"].replica_ids

        wait_until(lambda: app.call(1) == 4 and app.backend.transport("Times") == "direct", 10, "direct to Times")
        app.update("Times", max_ongoing_requests=7, max_queued_requests=3)  # a light change: replicas stay
        light = app.status().nodes
        assert light["Times"].replica_ids == scaled_down["Times"].replica_ids
        assert light["Times"].options == {"max_ongoing_requests": 7, "max_queued_requests": 3}
        pool = app.backend._direct.pools["Times"]  # the ingress holds calls to the new bounds too
        assert pool is not None and (pool.max_ongoing, pool.max_queued) == (7, 3)

        app.update("Times", init_args=(5,))  # a new constructor: new replicas
        assert app.call(1) == 10
        updated = app.status().nodes
        assert not set(updated["Times"].replica_ids) & set(light["Times"].replica_ids)
        assert updated["add_one"].replica_ids == before["add_one"].replica_ids


@ray_test
@pytest.mark.http
def test_ingress_replicas_serve_http_through_serves_proxy_beside_another_graph(
    app: dagserve.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    # The token is the deploying process's: the replicas' environment (Ray's) has none.
    monkeypatch.setenv("DAGSERVE_TOKEN", "from-the-driver")
    auth = {"authorization": "Bearer from-the-driver"}
    with dagserve.Input() as inp:
        g = dagserve.Graph(add_one(inp), name="neighbour")
    other = dagserve.deploy(g, backend="ray", ingress_replicas=2, ready_timeout_s=120)
    try:
        url = other.backend.ingress_url  # type: ignore[attr-defined]
        assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/neighbour")
        assert len(other.backend.replicas(INGRESS_DEPLOYMENT)) == 2  # type: ignore[attr-defined]
        with httpx.Client(timeout=30) as client:
            for _ in range(4):
                r = client.post(url + "/", json=41, headers={"x-request-id": "via-proxy-1", **auth})
                assert (r.status_code, r.json(), r.headers["x-request-id"]) == (200, 42, "via-proxy-1")
            assert client.post(url + "/", json=41).status_code == 401
            bad = client.post(url + "/", content=b"{oops", headers={"content-type": "application/json", **auth})
            assert bad.status_code == 400 and bad.json()["error"]["type"] == "InvalidJSON"
            assert client.get(url + "/-/ready").json() == {"ready": True, "graphs": {"neighbour": True}, "pending": {}}
        assert other.call(1) == 2  # the App still runs the graph in this process too
        assert {"features", "neighbour"} <= serve_apps()
        with pytest.raises(DeployError, match=r"A graph named 'neighbour' is already deployed on this Ray"):
            dagserve.deploy(g, backend="ray")
        pids = [r["pid"] for n in ("add_one", INGRESS_DEPLOYMENT) for r in other.backend.replicas(n)]  # type: ignore[attr-defined]
        assert len(pids) == 3
    finally:
        other.shutdown()
    assert "neighbour" not in serve_apps()
    wait_until(lambda: not any(_alive(pid) for pid in pids), 30, "the graph's replica processes to exit")
    assert app.call({"case": "who", "x": 2})["x"] == 2  # the other graph still serves
    with pytest.raises(dagserve.AppClosedError):
        other.call(1)


@ray_test
def test_calls_to_local_replicas_skip_serves_router(app: dagserve.App) -> None:
    """Once the ingress has connected to a node's replicas, calls go over their Unix sockets
    (the direct transport), spread over both replicas, and answer as through Serve."""
    wait_until(lambda: app.call({"case": "who", "x": 1})["x"] == 1 and app.backend.transport("Who") == "direct",
               10, "the direct transport to Who")
    answers = [app.call({"case": "who", "x": i}) for i in range(20)]
    assert [a["x"] for a in answers] == list(range(20))
    assert len({a["pid"] for a in answers}) == 2  # both replicas, in their own processes
    assert app.backend.transport("here") == "inline"
    with pytest.raises(KeyError, match="no node 'nope'"):
        app.backend.transport("nope")


@ray_test
def test_autoscaled_nodes_and_opted_out_backends_go_through_serve(ray_instance: None) -> None:
    """Serve's autoscaler counts only what its handles route: autoscaled nodes keep Serve's
    router. ``direct_transport=False`` sends every call through it; answers do not change."""
    with dagserve.Input() as inp:
        out = Times(3)(add_one.options(num_replicas="auto")(inp))
    graph = dagserve.Graph(out, name="transports")
    with dagserve.deploy(graph, backend="ray", ready_timeout_s=120) as app:
        fresh = app.status().nodes["Times"]
        assert (fresh.transport, fresh.transport_note) == ("no calls yet", None)  # not "serve" with no reason
        wait_until(lambda: app.call(1) == 6 and app.backend.transport("Times") == "direct", 10, "direct to Times")
        assert app.backend.transport("add_one") == "serve"
        assert "autoscaled" in (app.status().nodes["add_one"].transport_note or "")
    with dagserve.deploy(graph, backend="ray", direct_transport=False, ready_timeout_s=120) as app:
        assert [app.call(i) for i in range(5)] == [(i + 1) * 3 for i in range(5)]
        assert app.backend.transport("Times") == "serve" and not app.backend._direct.pools


def attached(app: dagserve.App, **options: Any) -> dagserve.App:
    """Another ingress on the same deployed graph (as an ingress replica is), in this process."""
    backend = RayBackend.attached(app._plan, dict(app.backend._versions), **options)  # type: ignore[attr-defined]
    return App(app.graph, app._plan, backend, request_timeout_s=60)


@ray_test
def test_a_replica_holds_max_ongoing_requests_over_every_ingress_and_serve_routed_calls(ray_instance: None) -> None:
    """Two ingresses on the direct transport and one through Serve's router share a replica with
    max_ongoing_requests=2: it never runs more than 2 calls at once, the direct calls it refused
    (counted) ran later or elsewhere, and every call succeeds."""
    with dagserve.Input() as inp:
        graph = dagserve.Graph(Peak()(inp), name="shared")
    with dagserve.deploy(graph, backend="ray", ready_timeout_s=120) as first:
        second, routed = attached(first), attached(first, direct_transport=False)
        try:
            for app in (first, second):
                wait_until(lambda a=app: a.call(0) == 1 and a.backend.transport("Peak") == "direct", 10, "direct")
            assert routed.call(0) == 1 and routed.backend.transport("Peak") == "serve"
            start = threading.Barrier(12)
            answers: list[Any] = []

            def one(app: dagserve.App) -> None:
                start.wait(30)
                try:
                    answers.append(app.call(1, timeout_s=60))
                except Exception as exc:  # noqa: BLE001 - every failure is kept and fails the test
                    answers.append(exc)

            threads = [threading.Thread(target=one, args=(a,)) for a in (first, second, routed) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert len(answers) == 12 and all(isinstance(a, int) for a in answers), answers
            assert max(answers) == 2  # the replica ran 2 at once, never more
            refusals = first.backend.direct_refusals()["Peak"] + second.backend.direct_refusals()["Peak"]  # type: ignore[attr-defined]
            assert refusals >= 1
        finally:
            second.shutdown()
            routed.shutdown()


@ray_test
def test_a_replica_serve_begins_to_stop_takes_no_new_direct_calls(
    ray_instance: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serve drains its own requests first (a wait of graceful_shutdown_wait_loop_s at least, 3 s
    here) and calls the replica's __del__ only then: direct calls must stop reaching the replica
    when the stop begins, not then. Calls keep succeeding on the other replica meanwhile."""
    monkeypatch.setattr(serve_options, "_GRACEFUL_SHUTDOWN_WAIT_LOOP_S", 3.0)
    with dagserve.Input() as inp:
        graph = dagserve.Graph(where(inp), name="stopping")
    with dagserve.deploy(graph, backend="ray", ready_timeout_s=120) as app:
        wait_until(lambda: app.call(0) and app.backend.transport("where") == "direct", 10, "direct to where")
        before = {r["pid"] for r in app.backend.replicas("where")}  # type: ignore[attr-defined]
        assert len(before) == 2
        served: list[tuple[int, float]] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def load() -> None:
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    served.append(tuple(app.call(0, timeout_s=30)))
                except BaseException as exc:  # noqa: BLE001 - kept, fails the test
                    failures.append(exc)
                time.sleep(0.005)

        caller = threading.Thread(target=load)
        caller.start()
        scaler = threading.Thread(target=app.scale, args=("where",), kwargs={"num_replicas": 1, "wait_s": 90})
        try:
            scaler.start()
            deadline = time.monotonic() + 60
            while len(live := {r["pid"] for r in app.backend.replicas("where")}) > 1:  # type: ignore[attr-defined]
                assert time.monotonic() < deadline, "Serve did not begin to stop a replica"
                time.sleep(0.05)
            stopping_since = time.time()  # Serve reports it stopping (it may have begun a little earlier)
            (stopped,) = before - live
            scaler.join(120)
        finally:
            stop.set()
            caller.join(60)
        assert not failures, failures[:3]
        late = [t - stopping_since for pid, t in served if pid == stopped and t > stopping_since + 1.0]
        assert not late, f"{len(late)} calls started on the stopping replica up to {max(late):.1f} s after it began to stop"
        assert any(pid != stopped and t > stopping_since for pid, t in served)  # calls went on meanwhile


@ray_test
def test_direct_calls_over_the_frame_limit_fail_naming_the_node_and_stalled_frames_are_cut(
    ray_instance: None,
) -> None:
    with dagserve.Input() as inp:
        out = dagserve.switch(inp["case"], {"blob": size_of(blob(inp["n"])), "send": size_of(inp["data"])})
        graph = dagserve.Graph(out, name="frames")
    limits = {"direct_max_frame_bytes": 64 * 1024, "direct_frame_timeout_s": 0.5}
    with dagserve.deploy(graph, backend="ray", ready_timeout_s=120, **limits) as app:
        def direct() -> bool:
            return app.call({"case": "blob", "n": 10}) == 10 and all(
                app.backend.transport(n) == "direct" for n in ("blob", "size_of")
            )

        wait_until(direct, 10, "direct to both nodes")
        assert app.call({"case": "blob", "n": 60_000}) == 60_000
        with pytest.raises(NodeError, match=r"Node 'blob': the result of a call pickled to \d+ bytes") as err:
            app.call({"case": "blob", "n": 100_000})
        assert err.value.node == "blob" and err.value.error_type == "FrameTooLarge"
        with pytest.raises(NodeError, match=r"Node 'size_of#2': the arguments of a call pickled to") as err:
            app.call({"case": "send", "data": b"x" * 100_000})  # the graph's second size_of step
        assert err.value.node == "size_of#2" and err.value.error_type == "FrameTooLarge"
        assert app.call({"case": "send", "data": b"x" * 1000}) == 1000  # connections unharmed

        pool = app.backend._direct.pools["size_of"]  # type: ignore[attr-defined]
        (path,) = [e.path for e in os.scandir(pool.directory) if e.name.endswith(".sock")]
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(FRAME_LENGTH.pack(100) + b"0123456789")  # a tenth of a frame, then nothing
            s.settimeout(30)
            assert s.recv(1) == b""  # the replica hung up (after its 0.5 s deadline)
        assert app.call({"case": "send", "data": b"ok"}) == 2


@ray_test
@pytest.mark.skipif(not needs_root, reason="making a process of another user needs root")
def test_the_ingress_ignores_a_socket_of_another_user_among_the_replicas(app: dagserve.App, tmp_path: Path) -> None:
    """A socket planted in a node's socket directory by another user's process is never read from:
    calls keep going to the real replica, and batch counts read over the sockets skip it too."""
    wait_until(lambda: app.call({"case": "batch", "x": 1}) == 1 and app.backend.transport("batch_size") == "direct",
               10, "direct to batch_size")
    pool = app.backend._direct.pools["batch_size"]  # type: ignore[attr-defined]
    marker = tmp_path / "ran-their-code"
    with foreign_socket(os.path.join(pool.directory, "planted.sock"), marker):
        wait_until(lambda: "planted" in pool._foreign, 10, "the pool to try the planted socket")
        assert [app.call({"case": "batch", "x": i}) for i in range(4)] == [1] * 4
        assert "planted" not in pool._conns
        assert sum(app.backend.batch_sizes()["batch_size"].values()) >= 5
    assert not marker.exists()


@ray_test
def test_prepare_connects_the_direct_transport_before_the_first_request(ray_instance: None) -> None:
    """dagserve.serve prepares every App before it reports ready (App.aprepare): the first request
    then goes straight to the replicas like the later ones, instead of through Serve's router while
    the direct pools connect (that first request took 100-200 ms, the later ones about 1 ms)."""
    with dagserve.deploy(dagserve.Graph(where, name="prepared"), backend="ray", ready_timeout_s=120) as app:

        async def first_call_transport() -> tuple[str, str, Any]:
            before = app.backend.transport("where")
            await app.aprepare(timeout_s=60)
            return before, app.backend.transport("where"), await app.acall(1)

        before, after, answer = asyncio.run(first_call_transport())
        assert (before, after) == ("serve", "direct")
        assert isinstance(answer[0], int)


@ray_test
def test_a_node_is_timed_on_its_own_when_serve_resolves_its_input(ray_instance: None) -> None:
    """nap's response goes whole to doze through Serve (by value, and as an object reference);
    nobody awaits nap here, yet its time is its own and doze's does not include it."""
    for by_reference in (False, True):
        serve_only = {"direct_transport": False, "pass_by_reference": by_reference}
        with dagserve.deploy(eg.napped(0.2, 0.05), backend="ray", ready_timeout_s=120, **serve_only) as app:
            for _ in range(2):
                ctx = dagserve.RequestContext()
                assert asyncio.run(app.acall(1, context=ctx)) == 1
                # Ordering with wide margins, not speed: nap slept 0.2 s, doze 0.05 s.
                assert ctx.timings["nap"] >= 0.15 and ctx.timings["doze"] < ctx.timings["nap"], ctx.timings
            assert app.backend.transport("nap") == "serve"  # type: ignore[attr-defined]


@ray_test
def test_ray_listens_on_loopback_only_with_token_auth(app: dagserve.App) -> None:
    """Every listening TCP socket of this process and the Ray processes it started (GCS, raylet,
    agents, Serve controller, replicas) is bound to 127.0.0.1; read from /proc, not a tool."""
    listening = _listening_sockets(descendants(os.getpid()))
    assert len(listening) >= 5, listening  # GCS, raylet, controller, replicas... were found
    outside = [(pid, addr) for pid, addr in listening if not _is_loopback(addr)]
    assert not outside, f"listening beyond loopback: {outside}"
    assert token_auth_enabled()
    token_file = Path.home() / ".ray" / "auth_token"
    assert token_file.stat().st_mode & 0o777 == 0o600  # the token is its owner's only


# -- calls in flight, with fake handles (no Ray) ------------------------------------------------------


class FakeResponse:
    """Stands for a DeploymentResponse: yields ``outcomes`` in turn (a value, or an exception)."""

    def __init__(self, outcome: Any, delay: float = 0.0, assigned: bool = True) -> None:
        import concurrent.futures

        self.outcome = outcome
        self.delay = delay
        self.cancelled = False
        # Serve's own field: done once the router has handed the call to a replica.
        self._replica_result_future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if assigned:
            self._replica_result_future.set_result(None)

    def __await__(self) -> Any:
        return self._get().__await__()

    async def _get(self) -> Any:
        await asyncio.sleep(self.delay)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    def __init__(self, *outcomes: Any, delay: float = 0.0, assigned: bool = True) -> None:
        self.outcomes = list(outcomes)
        self.delay = delay
        self.assigned = assigned
        self.sent: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.responses: list[FakeResponse] = []

    def remote(self, header: Any, *args: Any, **kwargs: Any) -> FakeResponse:
        self.sent.append((args, kwargs))
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        self.responses.append(FakeResponse(outcome, self.delay, self.assigned))
        return self.responses[-1]


def pending(handle: FakeHandle, name: str, *args: Any, ctx: Any = None, **options: Any) -> Any:
    from dagserve.backends.ray.runner import _Pending
    from dagserve.compiler.plan import Step

    spec = dagserve.compile(dagserve.Graph(add_one.options(name=name, **options), name="g")).deployment(name)
    step = Step(0, name, "call", (), deployment=name, method="__call__")
    return _Pending(ServeTransport(handle), spec, step, CallHeader("__call__", name, "rid"), args, {}, ctx)


async def test_a_response_goes_whole_to_the_next_call() -> None:
    first, second = FakeHandle(1), FakeHandle(2)
    a = pending(first, "a", 0)
    b = pending(second, "b", a)
    assert await b == 2
    assert second.sent[0][0] == (first.responses[0],)  # the response itself, not its value


async def test_an_upstream_node_with_retries_or_a_timeout_is_checked_before_the_next_call() -> None:
    for options in ({"retries": 1}, {"timeout_s": 5.0}):
        first, second = FakeHandle(7), FakeHandle(8)
        b = pending(second, "b", pending(first, "a", 0, **options))
        assert await b == 8
        assert second.sent[0][0] == (7,)  # resolved here first


async def test_a_node_with_a_timeout_gets_its_inputs_as_values() -> None:
    first, second = FakeHandle(7), FakeHandle(8)
    assert await pending(second, "b", pending(first, "a", 0), timeout_s=5.0) == 8
    assert second.sent[0][0] == (7,)  # its clock starts when the input is ready


async def test_a_deadline_names_the_upstream_call_still_running() -> None:
    ctx = dagserve.RequestContext()
    first, second = FakeHandle(1, delay=5, assigned=False), FakeHandle(2, delay=5, assigned=False)
    b = pending(second, "b", pending(first, "a", 0, ctx=ctx), ctx=ctx)
    ctx.running.add("b")  # as the executor does while it awaits b
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_await(b), 0.05)
    assert ctx.running == {"a"}


async def test_a_lost_replica_is_retried_for_a_retries_node_only() -> None:
    from ray.exceptions import ActorDiedError

    handle = FakeHandle(ActorDiedError(), 5)
    assert await pending(handle, "a", 0, retries=2) == 5 and len(handle.sent) == 2
    with pytest.raises(
        NodeError, match=r"Node 'a' failed: the replica serving the request was lost \(ActorDiedError\)"
    ) as info:
        await pending(FakeHandle(ActorDiedError(), 5), "a", 0)
    assert info.value.node == "a" and "retries=N" in str(info.value)
    with pytest.raises(NodeError, match=r"lost after 2 retries"):
        await pending(FakeHandle(ActorDiedError()), "a", 0, retries=2)


async def test_errors_become_dagserve_errors_naming_the_node() -> None:
    from ray.exceptions import RayTaskError
    from ray.serve.exceptions import BackPressureError

    raised = NodeError("Node 'a' raised ValueError: no", node="a", error_type="ValueError")
    user = FakeHandle(RayTaskError("f", "traceback", raised).as_instanceof_cause())
    with pytest.raises(NodeError, match=r"^Node 'a' raised ValueError: no$"):
        await pending(user, "a", 0, retries=3)
    assert len(user.sent) == 1  # user errors are never retried
    full = FakeHandle(BackPressureError(num_queued_requests=3, max_queued_requests=3))
    with pytest.raises(
        OverloadedError, match=r"Node 'a' is overloaded: its queue is full \(max_queued_requests=3\)"
    ) as info:
        await pending(full, "a", 0, max_queued_requests=3)
    assert info.value.node == "a"


async def test_a_failure_caused_upstream_is_reported_for_the_upstream_node() -> None:
    from ray.exceptions import ActorDiedError

    first, second = FakeHandle(ActorDiedError()), FakeHandle(ActorDiedError())
    b = pending(second, "b", pending(first, "a", 0))
    with pytest.raises(NodeError, match=r"^Node 'a' failed"):
        await b


async def test_calls_record_their_own_time_also_when_handed_on_whole() -> None:
    import concurrent.futures

    class Result:  # Serve's replica result: takes done callbacks, called when the value is ready
        def __init__(self) -> None:
            self.callbacks: list[Any] = []

        def add_done_callback(self, callback: Any) -> None:
            self.callbacks.append(callback)

    ctx = dagserve.RequestContext()
    first, second = FakeHandle(1), FakeHandle(2, delay=0.05)  # (a fake's delay starts when awaited)
    a = pending(first, "a", 0, ctx=ctx)
    done = Result()
    a._response._replica_result_future = concurrent.futures.Future()
    a._response._replica_result_future.set_result(done)
    b = pending(second, "b", a, ctx=ctx)
    assert second.sent[0][0] == (first.responses[0],)  # handed on whole: never awaited here
    await asyncio.sleep(0.2)  # a runs...
    for callback in done.callbacks:  # ...and is done; b then runs 0.05 s
        callback("the value, which the timing ignores")
    assert await b == 2
    # b's own time runs from a's end; generous margins (ordering, not speed).
    assert ctx.timings["a"] >= 0.15 and ctx.timings["b"] < ctx.timings["a"], ctx.timings


async def test_cancelling_a_call_cancels_the_calls_it_consumes() -> None:
    first, second = FakeHandle(1, delay=5), FakeHandle(2, delay=5)
    b = pending(second, "b", pending(first, "a", 0))
    task = asyncio.ensure_future(_await(b))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert second.responses[0].cancelled and first.responses[0].cancelled


async def _await(p: Any) -> Any:
    return await p


# -- helpers ---------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _listening_sockets(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every TCP socket in LISTEN state that one of ``pids`` holds."""
    listen_by_inode: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    listen_by_inode[fields[9]] = fields[1]
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = target[8:-1]
                if inode in listen_by_inode:
                    out.append((pid, listen_by_inode[inode]))
    return out


def _is_loopback(hex_addr: str) -> bool:
    ip = hex_addr.split(":")[0]
    if len(ip) == 8:  # IPv4, little-endian bytes: 0100007F is 127.0.0.1
        return ip.upper().endswith("7F")
    # IPv6: ::1, or ::ffff:127.x.x.x (the IPv4-mapped loopback)
    return ip.upper() in ("00000000000000000000000001000000",) or (
        ip.upper().startswith("0000000000000000FFFF0000") and ip.upper().endswith("7F")
    )
