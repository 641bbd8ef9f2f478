"""Multiplexed nodes on the Ray backend (conftest.py's shared Ray, two or three replicas): the checks of
tests/multiplex_checks.py over the direct transport, and routing by Serve's own
``multiplexed_model_id`` when calls go through Serve handles. Replica counters reach the caller
about once a second (backends/ray/replica_models.py): checks of counters wait that long first."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import dagserve

from .. import multiplex_checks as mc
from .. import multiplex_graphs as mg

pytestmark = [pytest.mark.ray, pytest.mark.http]

SETTLE_S = 1.5


def wait_direct(app: dagserve.App, payload: dict[str, Any], node: str) -> None:
    deadline = time.monotonic() + 30
    while not (app.call(payload) and app.backend.transport(node) == "direct"):
        assert time.monotonic() < deadline, f"no direct transport to {node}"
        time.sleep(0.1)


def test_direct_transport_routing_concurrency_lru_and_release(shared_ray: None, tmp_path: Path) -> None:
    log = str(tmp_path / "models.log")
    with dagserve.deploy(mg.tenants(log, replicas=3), backend="ray", ready_timeout_s=180) as app:
        wait_direct(app, {"x": 0, "tenant": "a"}, "Tenants")
        mc.check_routing_to_holders(app, log, settle_s=SETTLE_S, exact=False)
        mc.check_one_load_for_concurrent_calls(app, log)
        mc.check_lru_bound_and_release(app, log, settle_s=SETTLE_S)
        mc.check_bad_model_id(app)
        mc.check_http(app)
        replicas = mc.models(app)["replicas"]
        assert set(replicas) == set(app.status().nodes["Tenants"].replica_ids)  # by Serve's replica id


def test_through_serve_handles_serve_routes_by_model_id(shared_ray: None, tmp_path: Path) -> None:
    log = str(tmp_path / "models.log")
    with dagserve.deploy(mg.tenants(log), backend="ray", ready_timeout_s=180, direct_transport=False) as app:
        for t in "abcd":
            assert app.call({"x": 1, "tenant": t})["model"] == t
        time.sleep(2 * SETTLE_S)  # Serve's controller passes the replicas' models on to the routers
        state = mc.models(app)
        assert app.backend.transport("Tenants") == "serve"
        held = sorted({m for h in state["replicas"].values() for m in h})
        answers = mc.burst(app, [{"x": i, "tenant": held[i % len(held)]} for i in range(40)])
        assert [a["model"] for a in answers] == [held[i % len(held)] for i in range(40)]
        after = mc.models(app)
        assert (after["loads"], after["evictions"]) == (state["loads"], state["evictions"])


def test_sync_loader_batches_and_guarded_loads(shared_ray: None, tmp_path: Path) -> None:
    log = str(tmp_path / "models.log")
    with dagserve.deploy(mg.sync_tenants(log), backend="ray", ready_timeout_s=180) as app:
        assert [app.call({"x": i, "tenant": t}) for i, t in enumerate("aab")] == ["a:0", "a:1", "b:2"]
        assert mg.events(log) == ["load a", "unload a", "load b"]
    with dagserve.deploy(mg.batched(), backend="ray", ready_timeout_s=180) as app:
        mc.check_per_id_batches(app)
    guarded = str(tmp_path / "guarded.log")
    with dagserve.deploy(mg.guarded(guarded), backend="ray", ready_timeout_s=180) as app:
        mc.check_failed_and_hanging_loads(app, guarded)
