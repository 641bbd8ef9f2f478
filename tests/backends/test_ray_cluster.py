"""Deploying onto a running multi-node Ray cluster (Ray nodes on this machine, loopback).

The cluster is made with ``ray.cluster_utils.Cluster``: a head and a node offering a custom
resource ``second``; tests add more. A node declared ``resources={"second": 1}`` must run there;
when that Ray node is removed under load, Serve must reschedule the replica on another node that
offers ``second`` and a ``retries=N`` node loses no request. dagserve connects with ``address=``,
must carry Serve's tuned settings to every replica it deploys (the cluster's processes were
started without them), spreads ``ingress_replicas`` over nodes, and never stops the cluster.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import dagserve
from dagserve.backends.ray.cluster import SERVE_SETTINGS, _loopback_only, merged_runtime_env
from dagserve.backends.ray.proxy import INGRESS_DEPLOYMENT, free_port

pytestmark = pytest.mark.ray


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


@dagserve.node(retries=3)
def front(x: int) -> int:
    return x + 1


@dagserve.node(resources={"second": 1}, retries=3)
class Placed:
    def __call__(self, x: int) -> list[Any]:
        return [x * 10, _node_id()]  # the value, and the Ray node of the replica that answered


def graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = Placed()(front(inp))
    return dagserve.Graph(out, name="placed")


@dagserve.node(inline=True)
def ingress_side(x: int) -> dict[str, Any]:
    """Runs in the ingress (replica) that took the request: where it runs and its Serve settings."""
    return {"node": _node_id(), "env": {k: os.environ.get(k) for k in SERVE_SETTINGS}}


@dagserve.node(num_replicas=2, resources={"spot": 1})  # the head and the second node offer one each
def replica_side(x: int) -> dict[str, Any]:
    return {"node": _node_id(), "env": {k: os.environ.get(k) for k in SERVE_SETTINGS}}


def spread_graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = {"ingress": ingress_side(inp), "replica": replica_side(inp)}
    return dagserve.Graph(out, name="spread")


@contextmanager
def _bare_env() -> Iterator[None]:
    """Nodes started meanwhile lack Serve's settings (as `ray start` without them would), and bind
    Serve's worker proxies to a port of their own (on one host they would share the head's)."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("RAY_SERVE_")}
    os.environ["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = str(free_port())
    try:
        with _loopback_only():
            yield
    finally:
        os.environ.pop("RAY_SERVE_WORKER_PROXY_HTTP_PORT", None)
        os.environ.update(saved)


#: Ray node id -> the port its Serve proxy binds (head: Serve's http port, read from Serve).
proxy_ports: dict[str, int] = {}


def add_node(cluster: Any, **options: Any) -> Any:
    with _bare_env():
        port = int(os.environ["RAY_SERVE_WORKER_PROXY_HTTP_PORT"])
        node = cluster.add_node(num_cpus=1, **options)
    proxy_ports[node.node_id] = port
    return node


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    import ray
    from ray import cluster_utils

    assert not ray.is_initialized(), "this module connects to its own cluster"
    # Loopback only, like a Ray that dagserve starts; and keep the cluster's address out of
    # /tmp/ray/ray_current_cluster, where other processes' `ray.init()` would find it.
    original_write = ray._private.utils.write_ray_address
    ray._private.utils.write_ray_address = lambda *a, **k: None
    try:
        with _bare_env():
            c = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "resources": {"spot": 1}})
        add_node(c, resources={"second": 1, "spot": 1})
    finally:
        ray._private.utils.write_ray_address = original_write
    yield c
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()
    c.shutdown()


def replica_nodes(app: dagserve.App, node: str) -> list[str]:
    running = [r for r in app.backend.replicas(node) if r["state"] == "RUNNING"]  # type: ignore[attr-defined]
    return sorted(str(r["node_id"]) for r in running)


def replica_node(app: dagserve.App, node: str) -> str:
    nodes = replica_nodes(app, node)
    assert len(nodes) == 1, nodes
    return nodes[0]


def wait_for(check: Any, seconds: float, what: str) -> Any:
    """Poll ``check`` (falsy or raising a dagserve/HTTP error: not yet) for at most ``seconds``."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            found = check()
            if found:
                return found
        except (AssertionError, dagserve.DagserveError, httpx.HTTPError):
            pass
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)


def test_ingress_replicas_spread_over_nodes_answer_through_each_nodes_proxy_with_tuned_settings(
    cluster: Any,
) -> None:
    """First in the module: dagserve starts Serve here, with a proxy on every node."""
    import httpx

    app = dagserve.deploy(
        spread_graph(), backend="ray", address=cluster.address, ingress_replicas=2, ready_timeout_s=180
    )
    try:
        ingress_nodes = replica_nodes(app, INGRESS_DEPLOYMENT)
        assert len(ingress_nodes) == 2 and len(set(ingress_nodes)) == 2, ingress_nodes  # one per node
        url = app.backend.ingress_url  # type: ignore[attr-defined]
        head_port = int(url.split(":")[2].split("/")[0])
        ports = {cluster.head_node.node_id: head_port, **proxy_ports}
        answered: dict[str, list[dict[str, Any]]] = {}  # proxy's node -> what answered through it
        with httpx.Client(timeout=30) as client:
            for node in ingress_nodes:  # every node with an ingress replica runs a proxy
                proxy = url.replace(f":{head_port}/", f":{ports[node]}/") + "/"
                wait_for(lambda: client.post(proxy, json=1).status_code == 200, 90, f"the proxy on {node}")
                answered[node] = [client.post(proxy, json=i).json() for i in range(6)]
        # Each proxy prefers the ingress replica on its own node: both replicas answer HTTP.
        assert {node: {b["ingress"]["node"] for b in bodies} for node, bodies in answered.items()} == {
            node: {node} for node in ingress_nodes
        }
        # Each ingress prefers the replica on its own node (Serve's router would pick either).
        local = replica_nodes(app, "replica_side")
        assert local == sorted(ingress_nodes)
        for node in ingress_nodes:
            assert {b["replica"]["node"] for b in answered[node]} == {node}
        body = answered[ingress_nodes[0]][0]

        # Serve's settings reached both kinds of replica, on nodes started without them.
        carried = app.status().settings["replica_env"]
        assert carried["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
        assert carried["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
        assert {k: v for k, v in body["replica"]["env"].items() if v is not None} == carried
        assert {k: v for k, v in body["ingress"]["env"].items() if v is not None} == carried
        print(f"\ningress replicas on nodes {ingress_nodes}, local replicas on {sorted(local)}; settings {carried}")
    finally:
        app.shutdown()


def test_a_retries_node_loses_no_request_when_its_ray_node_is_removed_under_load(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    head, second = cluster.head_node, next(iter(cluster.worker_nodes))
    app = dagserve.deploy(graph(), backend="ray", address=cluster.address, ready_timeout_s=180)
    try:
        assert app.call(1) == [20, second.node_id]
        assert replica_node(app, "Placed") == second.node_id
        third = add_node(cluster, resources={"second": 1})
        figures = asyncio.run(remove_under_load(app, cluster, second, third))
        print(f"\nnode removed under load: {figures}")
        assert figures["failed"] == 0, figures["errors"][:3]
        assert figures["after"] >= 50  # traffic went on on the third node
        # Serve's view settles a moment after the traffic moved (the lost replica's record goes).
        for _ in range(120):
            if app.status().ready:
                break
            time.sleep(0.5)
        assert app.status().ready

        # A node added later gets the new replica of a scale-up, and traffic.
        fourth = add_node(cluster, resources={"second": 1})
        app.scale("Placed", num_replicas=2, wait_s=120)
        assert replica_nodes(app, "Placed") == sorted([third.node_id, fourth.node_id])

        async def burst() -> set[str]:
            results = await asyncio.gather(*(app.acall(i) for i in range(40)))
            assert [r[0] for r in results] == [(i + 1) * 10 for i in range(40)]
            return {r[1] for r in results}

        assert wait_for(lambda: asyncio.run(burst()) == {third.node_id, fourth.node_id}, 60, "traffic to both")
    finally:
        app.shutdown()
    # dagserve connected to this cluster: it disconnects, and the cluster keeps running, as
    # "auto" (reading RAY_ADDRESS, as `ray.init(address="auto")` does) finds.
    assert not ray.is_initialized()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    with dagserve.Input() as inp:
        small = dagserve.Graph(front(inp), name="auto")
    with dagserve.deploy(small, backend="ray", address="auto", ready_timeout_s=120) as again:
        assert again.call(1) == 2
        assert {n["NodeID"] for n in ray.nodes() if n["Alive"]} == {head.node_id, third.node_id, fourth.node_id}
    assert not ray.is_initialized()


async def remove_under_load(app: dagserve.App, cluster: Any, victim: Any, spare: Any) -> dict[str, Any]:
    """Four clients call the graph; after 40 answers ``victim`` (the Ray node of ``Placed``) is
    removed; they stop 60 answers after one came from ``spare`` (bounded: 2,000 calls, 120 s)."""
    counts = {"ok": 0, "failed": 0, "after": 0}
    errors: list[BaseException] = []
    removed = asyncio.Event()
    stop = asyncio.Event()
    deadline = time.monotonic() + 120

    async def client(k: int) -> None:
        n = k
        while not stop.is_set() and counts["ok"] + counts["failed"] < 2000 and time.monotonic() < deadline:
            try:
                value, node = await app.acall(n)
                assert value == (n + 1) * 10
                counts["ok"] += 1
                counts["after"] += node == spare.node_id
                if counts["ok"] >= 40 and not removed.is_set():
                    removed.set()
                if counts["after"] >= 60:
                    stop.set()
            except dagserve.DagserveError as exc:
                counts["failed"] += 1
                errors.append(exc)
            n += 4

    tasks = [asyncio.create_task(client(k)) for k in range(4)]
    await asyncio.wait_for(removed.wait(), 120)
    started = time.monotonic()
    await asyncio.to_thread(cluster.remove_node, victim)
    await asyncio.gather(*tasks)
    return {**counts, "seconds_after_removal": round(time.monotonic() - started, 1), "errors": errors}


def test_serve_settings_are_merged_under_the_jobs_runtime_env() -> None:
    tuned = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S": "0.01"}
    assert merged_runtime_env(None, tuned) == {"env_vars": tuned}
    assert merged_runtime_env({}, {}) == {}
    # The job's runtime_env (what Serve would give a deployment) stays whole; its env_vars win.
    job = {"working_dir": "gcs://_ray_pkg_x.zip", "env_vars": {"RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S": "0.2", "A": "b"}}
    assert merged_runtime_env(job, tuned) == {
        "working_dir": "gcs://_ray_pkg_x.zip",
        "env_vars": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S": "0.2", "A": "b"},
    }
    assert job["env_vars"] == {"RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S": "0.2", "A": "b"}  # not changed


# -- start-up retry and auth checks (unit tests of _ray_cluster: ray.init is stubbed, no Ray starts) --


def _stub_init(
    monkeypatch: pytest.MonkeyPatch, errors: list[Exception], *, token_auth: bool = True
) -> list[dict[str, Any]]:
    """Stub ray.init (and ray.shutdown, counted as a call {"shutdown": True}); Ray then reports
    ``token_auth``; the home directory (where Ray's token file lives) is a temporary one."""
    import tempfile

    import ray

    from dagserve.backends.ray import cluster as _ray_cluster

    calls: list[dict[str, Any]] = []

    def init(**kwargs: Any) -> None:
        calls.append(kwargs)
        if errors:
            raise errors.pop(0)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append({"shutdown": True}))
    monkeypatch.setattr(_ray_cluster, "token_auth_enabled", lambda: token_auth)
    monkeypatch.setenv("HOME", tempfile.mkdtemp(prefix="dagserve-home-"))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "DAGSERVE_ALLOW_UNAUTHENTICATED_RAY"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_local_ray_start_is_retried_once_when_gcs_never_came_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dagserve.backends.ray.cluster import start_local_ray

    gcs = RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_abc")
    calls = _stub_init(monkeypatch, [gcs])
    with caplog.at_level("WARNING", logger="dagserve.ray"):
        start_local_ray(num_cpus=1)
    assert len(calls) == 3 and calls[2]["address"] == "local"  # init, shutdown, init
    assert "starting it once more" in caplog.text

    calls = _stub_init(monkeypatch, [gcs, RuntimeError("Timed out waiting for file .../gcs_server_port_def")])
    with pytest.raises(RuntimeError, match="gcs_server_port_def"):
        start_local_ray(num_cpus=1)
    assert len([c for c in calls if "address" in c]) == 2  # once more, not forever

    # Ray raises a bare Exception when the raylet never registers with the GCS.
    raylet = Exception("The current node timed out during startup. This could happen because some of the raylet failed")
    calls = _stub_init(monkeypatch, [raylet])
    start_local_ray(num_cpus=1)
    assert len([c for c in calls if "address" in c]) == 2


def test_other_local_ray_start_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagserve.backends.ray.cluster import start_local_ray

    calls = _stub_init(monkeypatch, [RuntimeError("Maybe you called ray.init twice by accident?")])
    with pytest.raises(RuntimeError, match="twice"):
        start_local_ray(num_cpus=1)
    assert len(calls) == 1


def test_a_ray_without_token_auth_is_refused_unless_allowed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dagserve import DeployError
    from dagserve.backends.ray.cluster import start_local_ray

    # The environment turns Ray's auth off: refused before anything starts, through deploy too.
    calls = _stub_init(monkeypatch, [], token_auth=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    refused = r"dagserve starts Ray only with token authentication, and RAY_AUTH_MODE='disabled' is set"
    with pytest.raises(DeployError, match=refused) as info:
        start_local_ray(num_cpus=1)
    assert "DAGSERVE_ALLOW_UNAUTHENTICATED_RAY=1" in str(info.value) and "--allow-unauthenticated-ray" in str(info.value)
    with dagserve.Input() as inp:
        small = dagserve.Graph(front(inp), name="unauthenticated")
    with pytest.raises(DeployError, match=refused):
        dagserve.deploy(small, backend="ray")
    assert calls == []

    # Opted out, by argument or by environment: it starts, with a warning.
    with caplog.at_level("WARNING", logger="dagserve.ray"):
        start_local_ray(num_cpus=1, allow_unauthenticated=True)
        monkeypatch.setenv("DAGSERVE_ALLOW_UNAUTHENTICATED_RAY", "1")
        start_local_ray(num_cpus=1)
    assert len(calls) == 2 and "WITHOUT token authentication" in caplog.text

    # Ray started without auth although nothing asked for that: stopped again, and refused.
    calls = _stub_init(monkeypatch, [], token_auth=False)
    with pytest.raises(DeployError, match="and Ray did not turn it on"):
        start_local_ray(num_cpus=1)
    assert calls[1:] == [{"shutdown": True}]


def test_rays_token_file_is_readable_by_its_owner_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    import os
    from pathlib import Path

    from dagserve.backends.ray.cluster import start_local_ray

    _stub_init(monkeypatch, [])
    token = Path.home() / ".ray" / "auth_token"
    start_local_ray(num_cpus=1)  # no token yet: made private before Ray would make it 0644
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    first = token.read_text()
    token.chmod(0o644)  # as an earlier Ray left it
    start_local_ray(num_cpus=1)
    assert token.stat().st_mode & 0o777 == 0o600 and token.read_text() == first  # tightened, same token

    # A token file the user points Ray at is theirs: a warning, not a change.
    own = tmp_path / "token"
    own.write_text("x" * 64)
    own.chmod(0o640)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(own))
    with caplog.at_level("WARNING", logger="dagserve.ray"):
        start_local_ray(num_cpus=1)
    assert own.stat().st_mode & 0o777 == 0o640 and f"{own} can be read by other users" in caplog.text
    assert os.path.exists(token)
