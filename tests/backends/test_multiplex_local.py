"""Multiplexed nodes on the local backend (docs/multiplexing.md): the checks of
tests/multiplex_checks.py, from Python and over real HTTP."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

import dagserve

from .. import multiplex_checks as mc
from .. import multiplex_graphs as mg


def test_routing_concurrency_and_the_lru_bound(tmp_path: Path) -> None:
    log = str(tmp_path / "models.log")
    with dagserve.deploy(mg.tenants(log), backend="local") as app:
        mc.check_routing_to_holders(app, log)
        mc.check_one_load_for_concurrent_calls(app, log)
        mc.check_lru_bound_and_release(app, log)
        mc.check_bad_model_id(app)


def test_a_sync_loader_and_unload(tmp_path: Path) -> None:
    log = str(tmp_path / "models.log")
    with dagserve.deploy(mg.sync_tenants(log), backend="local") as app:
        assert [app.call({"x": i, "tenant": t}) for i, t in enumerate("aab")] == ["a:0", "a:1", "b:2"]
        # Room is made before the new model loads (memory for its weights); the class's unload, not close().
        assert mg.events(log) == ["load a", "unload a", "load b"]
        state = mc.models(app, "SyncTenants")
        assert (state["loads"], state["evictions"], state["hits"]) == (2, 1, 1)


def test_the_model_id_from_another_node() -> None:
    with dagserve.deploy(mg.computed(), backend="local") as app:
        assert [app.call({"x": x})["answer"] for x in range(4)] == ["t0:0", "t1:1", "t2:2", "t0:3"]


def test_per_id_batches() -> None:
    with dagserve.deploy(mg.batched(), backend="local") as app:
        mc.check_per_id_batches(app)


def test_optional_and_timeouts_cover_failing_and_hanging_loads(tmp_path: Path) -> None:
    log = str(tmp_path / "models.log")
    with dagserve.deploy(mg.guarded(log), backend="local") as app:
        mc.check_failed_and_hanging_loads(app, log)


def test_http_header_status_and_metrics(tmp_path: Path) -> None:
    with dagserve.deploy(mg.tenants(str(tmp_path / "models.log")), backend="local") as app:
        mc.check_http(app)
        status = app.status().to_dict()["nodes"]["Tenants"]["models"]
        assert set(status["replicas"]) == set(app.status().nodes["Tenants"].replica_ids)
        assert Counter(m for h in status["replicas"].values() for m in h) == Counter({"h1": 1, "h2": 1})


def test_a_requests_default_model_id_fills_a_missing_field_only() -> None:
    """Without a schema the payload's missing field is a KeyError; the request's default model id
    (the header over HTTP, RequestContext.model_id from Python) stands in for it."""
    from dagserve import RequestContext, RequestError

    with dagserve.deploy(mg.sync_tenants(), backend="local") as app:

        async def call(payload: dict[str, object], default: str | None) -> object:
            return await app.acall(payload, context=RequestContext(model_id=default))

        assert asyncio.run(call({"x": 1}, "d")) == "d:1"
        assert asyncio.run(call({"x": 2, "tenant": "p"}, "d")) == "p:2"  # the payload wins
        with pytest.raises(RequestError, match="The payload has no 'tenant'"):
            asyncio.run(call({"x": 3}, None))
