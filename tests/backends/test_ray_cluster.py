"""Deploying onto a running multi-node Ray cluster (three Ray nodes on this machine, loopback).

The cluster is made with ``ray.cluster_utils.Cluster``: a head and a node offering a custom
resource ``second``. A node declared ``resources={"second": 1}`` must run there; when that Ray
node is removed, Serve must reschedule the replica on another node that offers ``second``.
dagserve connects with ``address=`` and must never stop the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

import dagserve
from dagserve.backends.ray.cluster import _loopback_only

pytestmark = pytest.mark.ray


@dagserve.node
def front(x: int) -> int:
    return x + 1


@dagserve.node(resources={"second": 1})
class Placed:
    def __call__(self, x: int) -> int:
        return x * 10


def graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = Placed()(front(inp))
    return dagserve.Graph(out, name="placed")


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
        with _loopback_only():
            c = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
            c.add_node(num_cpus=1, resources={"second": 1})
    finally:
        ray._private.utils.write_ray_address = original_write
    yield c
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()
    c.shutdown()


def replica_node(app: dagserve.App, node: str) -> str:
    running = [r for r in app.backend.replicas(node) if r["state"] == "RUNNING"]  # type: ignore[attr-defined]
    assert len(running) == 1, running
    return str(running[0]["node_id"])


def test_node_placed_by_resource_survives_the_removal_of_its_ray_node(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    head, second = cluster.head_node, next(iter(cluster.worker_nodes))
    app = dagserve.deploy(graph(), backend="ray", address=cluster.address, ready_timeout_s=180)
    try:
        assert app.call(1) == 20
        assert replica_node(app, "Placed") == second.node_id
        assert replica_node(app, "front") in {head.node_id, second.node_id}

        with _loopback_only():
            third = cluster.add_node(num_cpus=1, resources={"second": 1})
        removed_at = time.monotonic()
        cluster.remove_node(second)
        while True:
            try:
                if replica_node(app, "Placed") == third.node_id and app.call(2) == 30:
                    break
            except (AssertionError, dagserve.DagserveError):
                pass
            assert time.monotonic() - removed_at < 90, "the replica was not rescheduled on the third node"
            time.sleep(0.5)
        print(
            f"\nreplica rescheduled on the third node {time.monotonic() - removed_at:.1f} s after its node was removed"
        )
        assert app.status().ready
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
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2  # head and the third node
    assert not ray.is_initialized()


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
