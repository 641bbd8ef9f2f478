"""The in-process backend, through dagserve.deploy(..., backend="local")."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import dagserve
from dagserve import DeployError, NodeError, OverloadedError
from dagserve.runtime.sync_calls import PROMOTE_AFTER, SyncCalls

from .. import example_graphs as eg


def test_chain_and_status() -> None:
    with dagserve.deploy(eg.chain(), backend="local") as app:
        assert app.call(4) == {"y": 15}
        status = app.status()
        assert status.ready and status.backend == "local"
        assert set(status.nodes) == {"pre", "Scale", "post"}
        assert status.nodes["Scale"].running_replicas == 1 and status.nodes["Scale"].kind == "model"


def test_shared_node_runs_once_per_request() -> None:
    eg.CALLS.clear()
    with dagserve.deploy(eg.shared_once(), backend="local") as app:
        assert app.call(3) == [4, 6, 3]
        assert app.call(5) == [6, 10, 5]
    assert eg.CALLS["shared"] == 2


def test_switch_is_lazy_across_deployments() -> None:
    eg.CALLS.clear()
    with dagserve.deploy(eg.switched(), backend="local") as app:
        assert app.call({"x": 1, "route": "a"}) == 1
        assert app.call({"x": 1, "route": "b"}) == 2
        assert app.call({"x": 1, "route": "other"}) == 1
    assert eg.CALLS == {"branch_a": 1, "branch_b": 1, "branch_default": 1}


def test_branches_run_concurrently() -> None:
    with dagserve.deploy(eg.overlapping(0.3), backend="local") as app:
        assert eg.overlapped(app.call({"x": 1}))


def test_sync_node_code_runs_off_the_event_loop() -> None:
    @dagserve.node
    def blocking(x: int) -> tuple[str, float, float]:
        start = time.time()
        time.sleep(0.2)
        return threading.current_thread().name, start, time.time()

    with dagserve.Input() as inp:
        g = dagserve.Graph([blocking(inp), blocking(inp)], name="blocking")
    with dagserve.deploy(g, backend="local") as app:
        answers = app.call(1)
    assert eg.overlapped([a[1:] for a in answers])  # both sleeps overlapped in the pool
    assert all(a[0].startswith("dagserve-node") for a in answers)


@dagserve.node
def sometimes_slow(p: dict[str, float]) -> list[Any]:
    """Sleeps ``p["s"]`` seconds (0: a fast call); says which thread ran it, and when."""
    start = time.time()
    if p["s"]:  # time.sleep(0) would still give up the GIL: the policy counts that as blocking
        time.sleep(p["s"])
    return [threading.current_thread().name, start, time.time()]


def _until_inline(app: dagserve.App, sync: SyncCalls, payload: Any) -> Any:
    """Fast calls until the node's policy runs it inline (bounded: a loaded machine may make a
    few of them look slow); the answer of the first inline call."""
    for _ in range(20 * PROMOTE_AFTER):
        app.call(payload)
        if sync.mode("__call__") == "inline":
            return app.call(payload)
    raise AssertionError(f"still {sync.mode('__call__')} after {20 * PROMOTE_AFTER} fast calls")


def _slow_beside_fast(app: dagserve.App, slow_s: float) -> tuple[list[Any], list[Any]]:
    """A slow call, and a fast one sent while it runs; both answers."""

    async def main() -> tuple[list[Any], list[Any]]:
        slow = asyncio.ensure_future(app.acall({"s": slow_s}))
        await asyncio.sleep(slow_s / 5)
        fast = await app.acall({"s": 0.0})
        return await slow, fast

    return asyncio.run(main())


def test_a_fast_sync_node_ends_up_inline_and_a_slow_call_never_blocks_the_loop_for_long() -> None:
    """Slow from the start: on threads, other requests go on. Proven fast: inline on the loop.
    Slow once inline: that one call ran on the loop, and the node is back on threads at once."""
    with dagserve.deploy(dagserve.Graph(sometimes_slow, name="sometimes"), backend="local") as app:
        sync = app.backend._deployments["sometimes_slow"].replicas[0].host.sync  # type: ignore[attr-defined]
        slow, fast = _slow_beside_fast(app, 0.6)
        assert slow[0].startswith("dagserve-node") and fast[2] < slow[2]  # answered while it slept
        assert sync.mode("__call__") == "probing"
        loop_thread = _until_inline(app, sync, {"s": 0.0})[0]
        assert not loop_thread.startswith("dagserve-node")
        assert app.call({"s": 0.2})[0] == loop_thread  # the first slow call cannot be foreseen
        assert sync.mode("__call__") == "probing"
        slow, fast = _slow_beside_fast(app, 0.6)
        assert slow[0].startswith("dagserve-node") and fast[2] < slow[2]


def test_inline_sync_option_forces_where_sync_code_runs() -> None:
    @dagserve.node
    def where(x: int) -> str:
        return threading.current_thread().name

    with dagserve.Input() as inp:
        g = dagserve.Graph([where.options(name="on_loop", inline_sync=True)(inp),
                            where.options(name="on_threads", inline_sync=False)(inp)], name="forced")
    with dagserve.deploy(g, backend="local") as app:
        answers = [app.call(1) for _ in range(3 * PROMOTE_AFTER)]
        modes = {n: app.backend._deployments[n].replicas[0].host.sync.modes() for n in ("on_loop", "on_threads")}  # type: ignore[attr-defined]
    assert not any(a[0].startswith("dagserve-node") for a in answers)  # inline from the first call
    assert all(a[1].startswith("dagserve-node") for a in answers)
    assert modes == {"on_loop": {"__call__": "inline"}, "on_threads": {"__call__": "threads"}}


def test_batching_groups_concurrent_requests() -> None:
    async def main(app: dagserve.App) -> list[int]:
        return await asyncio.gather(*(app.acall(i) for i in range(20)))

    with dagserve.deploy(eg.batched(), backend="local") as app:
        sizes = asyncio.run(main(app))
    assert max(sizes) == 8 and sum(1 for s in sizes if s > 1) >= 16


def test_batch_of_wrong_length_names_the_node() -> None:
    with dagserve.deploy(dagserve.Graph(eg.batch_wrong_length, name="wrong"), backend="local") as app, \
            pytest.raises(NodeError, match=r"Batched node 'batch_wrong_length' returned 0 results for a batch of 1"):
        app.call(1)


def test_replicas_are_constructed_once_each_and_share_load() -> None:
    built: list[int] = []

    @dagserve.node(num_replicas=3)
    class Loaded:
        def __init__(self) -> None:
            built.append(1)
            self.me = id(self)

        async def __call__(self, x: int) -> int:
            await asyncio.sleep(0.05)
            return self.me

    async def main(app: dagserve.App) -> set[int]:
        return set(await asyncio.gather(*(app.acall(i) for i in range(9))))

    with dagserve.Input() as inp:
        g = dagserve.Graph(Loaded()(inp), name="loaded")
    with dagserve.deploy(g, backend="local") as app:
        assert len(built) == 3
        assert len(asyncio.run(main(app))) == 3
        assert len(app.status().nodes["Loaded"].replica_ids) == 3


def test_model_init_failure_is_a_deploy_error() -> None:
    @dagserve.node
    class Broken:
        def __init__(self) -> None:
            raise FileNotFoundError("weights.bin")

        def __call__(self, x: int) -> int:
            return x

    with dagserve.Input() as inp:
        g = dagserve.Graph(Broken()(inp), name="broken")
    with pytest.raises(DeployError, match=r"Node 'Broken' failed to start: its __init__ raised FileNotFoundError: weights\.bin"):
        dagserve.deploy(g, backend="local")


def test_bounded_queue_rejects_with_overloaded() -> None:
    slow = eg.slow.options(max_ongoing_requests=1, max_queued_requests=1, name="narrow")
    with dagserve.Input() as inp:
        g = dagserve.Graph(slow(inp, 0.3), name="narrow")

    async def main(app: dagserve.App) -> list[object]:
        return await asyncio.gather(*(app.acall(i) for i in range(4)), return_exceptions=True)

    with dagserve.deploy(g, backend="local") as app:
        results = asyncio.run(main(app))
    rejected = [r for r in results if isinstance(r, OverloadedError)]
    assert sorted(r for r in results if isinstance(r, int)) == [0, 1]
    assert len(rejected) == 2 and rejected[0].node == "narrow" and rejected[0].status_code == 503
    assert "max_queued_requests=1" in str(rejected[0])


def test_scale_changes_one_node_only() -> None:
    with dagserve.deploy(eg.chain(), backend="local") as app:
        before = app.status().nodes
        app.scale("Scale", num_replicas=3)
        after = app.status().nodes
        assert after["Scale"].running_replicas == 3
        assert after["Scale"].replica_ids[0] == before["Scale"].replica_ids[0]
        assert after["pre"].replica_ids == before["pre"].replica_ids
        assert after["post"].replica_ids == before["post"].replica_ids
        assert app.plan.deployment("Scale").options.num_replicas == 3
        app.scale("Scale", num_replicas=1)
        assert app.status().nodes["Scale"].running_replicas == 1
        assert app.call(1) == {"y": 6}


def test_update_swaps_implementation_and_options() -> None:
    class Triple:
        def __init__(self, factor: int) -> None:
            self.factor = factor * 3

        def __call__(self, x: int) -> int:
            return x * self.factor

        async def offset(self, x: int) -> int:
            return x

    with dagserve.deploy(eg.chain(), backend="local") as app:
        pre_ids = app.status().nodes["pre"].replica_ids
        app.update("Scale", implementation=Triple, timeout_s=5)
        assert app.call(1) == {"y": 18}
        assert app.plan.deployment("Scale").options.timeout_s == 5
        app.update("Scale", init_args=(1,))
        assert app.call(1) == {"y": 6}
        assert app.status().nodes["pre"].replica_ids == pre_ids


def test_node_code_sees_the_request_id() -> None:
    @dagserve.node
    def sync_rid(x: int) -> str | None:
        return dagserve.current_request_id()

    @dagserve.node
    async def async_rid(x: int) -> str | None:
        return dagserve.current_request_id()

    with dagserve.Input() as inp:
        g = dagserve.Graph([sync_rid(inp), async_rid(inp)], name="rid")
    with dagserve.deploy(g, backend="local") as app:
        assert app.call(1, request_id="req-42") == ["req-42", "req-42"]
    assert dagserve.current_request_id() is None
