"""The same graph suite on the "local" and "ray" backends gives identical results.

One graph routes each payload (by ``case``) to a sub-graph: a chain, a fan-out, a node shared by
three readers, a keyed and a seeded split, structured outputs, a batched node and failing nodes. It is deployed
once per backend (on the Ray of tests/conftest.py shared_ray) and every payload's answer, or error (type, node,
message), must match. Node calls are recorded in a file, so what ran is visible across processes.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import dagserve
from dagserve import NodeError

from .. import example_graphs as eg

pytestmark = pytest.mark.ray


# The nodes are the shared ones of tests/example_graphs.py; combine runs inline in the ingress here.
pre, Scale, post, slow, fail = eg.pre, eg.Scale, eg.post, eg.slow, eg.fail
batch_double, batch_wrong_length = eg.batch_double, eg.batch_wrong_length
combine = eg.combine.options(inline=True)


class Case(BaseModel):
    case: str
    x: int = 0
    user: str = "u1"


@dagserve.node
class Recorder:
    """Appends its tag to a file per call: which nodes ran, seen from any process."""

    def __init__(self, path: str, tag: str) -> None:
        self.path = path
        self.tag = tag

    def __call__(self, x: int) -> int:
        with open(self.path, "a") as f:
            f.write(self.tag + "\n")
        return x


def suite(record_to: Path) -> dagserve.Graph:
    path = str(record_to)
    scale3 = Scale(3)  # one instance in several places: one deployment
    with dagserve.Input(schema=Case) as inp:
        x = inp["x"]
        px = pre(x)
        shared = Recorder(path, "shared")(x)  # same class, other arguments: other deployments
        cases = {
            "chain": post(scale3(px)),
            "fan_out": {"sum": combine([slow(px, 0.3), slow(px, 0.3)]), "x": px},
            "overlap": [eg.timed(px, 0.3), eg.timed(px, 0.3)],
            "shared": [pre(shared), Scale(2)(shared), shared],
            "lazy_a": Recorder(path, "a")(x),
            "lazy_b": Recorder(path, "b")(px),
            "split": dagserve.split(
                {"stable": post(x), "canary": post(pre(x))}, {"stable": 50, "canary": 50}, key=inp["user"]
            ),
            "seeded": dagserve.split(
                {"stable": post(x), "canary": post(pre(x))}, {"stable": 50, "canary": 50}, seed=7, name="seeded"
            ),
            "timed": eg.doze(eg.nap(px, 0.2), 0.05),  # on Ray, nap's result goes to doze un-awaited
            # A node's timeout_s counts its own call only, not the 1.5 s of the upstream call it
            # takes whole (on Ray, handed to it un-awaited).
            "slow_upstream": slow.options(name="guarded", timeout_s=1.0)(slow(px, 1.5), 0),
            "structured": {"scaled": scale3(px), "offset": scale3.offset(px), "pair": (px, [x, 7])},
            "batched": batch_double(x),
            "error": post(fail(px)),
            "batch_error": batch_wrong_length(x),
        }
        out = dagserve.switch(inp["case"], cases)
    return dagserve.Graph(out, name="parity")


PAYLOADS: list[dict[str, Any]] = [
    {"case": "chain", "x": 4},
    {"case": "fan_out", "x": 1},
    {"case": "shared", "x": 3},
    {"case": "lazy_a", "x": 5},
    {"case": "lazy_b", "x": 5},
    *({"case": "split", "x": 10, "user": f"user-{i}"} for i in range(8)),
    {"case": "structured", "x": 1},
    {"case": "slow_upstream", "x": 2},
    {"case": "batched", "x": 21},
    {"case": "error", "x": 1},
    {"case": "batch_error", "x": 1},
    {"case": "no such case", "x": 1},
    {"x": 1},
]


def outcome(app: dagserve.App, payload: dict[str, Any]) -> Any:
    try:
        return ("ok", app.call(payload))
    except dagserve.DagserveError as exc:
        return ("error", type(exc).__name__, getattr(exc, "node", None), getattr(exc, "error_type", None), str(exc))


@pytest.fixture(scope="module")
def apps(shared_ray: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("parity")
    local = dagserve.deploy(suite(base / "local.log"), backend="local")
    ray_app = dagserve.deploy(suite(base / "ray.log"), backend="ray", ready_timeout_s=180)
    yield {"local": local, "ray": ray_app, "logs": {"local": base / "local.log", "ray": base / "ray.log"}}
    ray_app.shutdown()
    local.shutdown()


def recorded(path: Path) -> collections.Counter[str]:
    return collections.Counter(path.read_text().split()) if path.exists() else collections.Counter()


def test_every_payload_gives_the_same_answer_or_error(apps: dict[str, Any]) -> None:
    local = [outcome(apps["local"], p) for p in PAYLOADS]
    remote = [outcome(apps["ray"], p) for p in PAYLOADS]
    for payload, a, b in zip(PAYLOADS, local, remote, strict=True):
        assert a == b, f"{payload}: local {a} != ray {b}"
    by_case = {p.get("case"): o for p, o in zip(PAYLOADS, remote, strict=True)}
    assert by_case["chain"] == ("ok", {"y": 15})
    assert by_case["structured"] == ("ok", {"scaled": 6, "offset": 5, "pair": (2, [1, 7])})
    assert by_case["slow_upstream"][0] == "ok", by_case["slow_upstream"]
    assert by_case["error"][:4] == ("error", "NodeError", "fail", "ValueError")
    assert by_case["error"][4] == "Node 'fail' raised ValueError: bad value 2"
    assert "returned 0 results for a batch of 1" in by_case["batch_error"][4]
    assert by_case["no such case"][1] == "NoRouteError"
    assert by_case[None][1] == "InputValidationError"
    routes = {o[1]["y"] for p, o in zip(PAYLOADS, remote, strict=True) if p.get("case") == "split"}
    assert routes == {10, 11}  # eight users over a 50/50 keyed split reach both branches


def test_a_node_error_carries_the_nodes_traceback_from_either_backend(apps: dict[str, Any]) -> None:
    """The node's own frame (file and line) reaches the serving process, from a Ray replica too,
    with dagserve's and Ray's frames folded; unknown payload fields are refused on both."""
    for backend in ("local", "ray"):
        with pytest.raises(NodeError) as info:
            apps[backend].call({"case": "error", "x": 1})
        tb = info.value.traceback or ""
        assert re.search(r'example_graphs\.py", line \d+, in fail\n    raise ValueError', tb), tb
        assert tb.endswith("ValueError: bad value 2\n") and "frame(s) of dagserve, Ray or the event loop hidden" in tb
        assert "site-packages/ray/" not in tb and "/dagserve/runtime/" not in tb
        with pytest.raises(dagserve.InputValidationError, match="unknown field"):
            apps[backend].call({"case": "chain", "x": 1, "usr": "typo"})


def test_shared_node_runs_once_and_switch_runs_only_the_chosen_branch(apps: dict[str, Any]) -> None:
    for backend in ("local", "ray"):
        log = apps["logs"][backend]
        log.unlink(missing_ok=True)
        app = apps[backend]
        assert app.call({"case": "shared", "x": 3}) == [4, 6, 3]
        assert recorded(log) == {"shared": 1}, backend
        assert app.call({"case": "lazy_a", "x": 1}) == 1
        assert app.call({"case": "lazy_a", "x": 2}) == 2
        assert app.call({"case": "chain", "x": 2}) == {"y": 9}
        assert recorded(log) == {"shared": 1, "a": 2}, backend  # "b" never ran, nor "shared" again


def test_branches_run_concurrently_on_both(apps: dict[str, Any]) -> None:
    for backend in ("local", "ray"):
        app = apps[backend]
        assert app.call({"case": "fan_out", "x": 1}) == {"sum": 4, "x": 2}
        # Both branches were running at one moment: shown by their spans, not by a speed bound.
        assert eg.overlapped(app.call({"case": "overlap", "x": 1})), backend


def test_concurrent_batched_requests_agree(apps: dict[str, Any]) -> None:
    async def many(app: dagserve.App) -> list[Any]:
        return await asyncio.gather(*(app.acall({"case": "batched", "x": i}) for i in range(24)))

    results = {b: asyncio.run(many(apps[b])) for b in ("local", "ray")}
    assert results["local"] == results["ray"] == [2 * i for i in range(24)]


def test_node_error_keeps_its_type_across_processes(apps: dict[str, Any]) -> None:
    with pytest.raises(NodeError, match=r"^Node 'fail' raised ValueError: bad value 8$") as info:
        apps["ray"].call({"case": "error", "x": 7})
    assert info.value.node == "fail" and info.value.error_type == "ValueError" and info.value.status_code == 500


def test_a_seeded_split_takes_the_same_branches_in_every_deployment(apps: dict[str, Any], tmp_path: Path) -> None:
    """The n-th request reaching a split with seed=7 takes the same branch in every App (only this
    test sends "seeded" requests, so each App starts its sequence here)."""

    def branches(app: dagserve.App) -> list[int]:  # 0: stable, 1: canary
        return [app.call({"case": "seeded", "x": 10})["y"] - 10 for _ in range(40)]

    with dagserve.deploy(suite(tmp_path / "fresh.log"), backend="local") as fresh:
        expected = branches(fresh)
    assert 5 < sum(expected) < 35  # both branches, about half each
    assert branches(apps["local"]) == expected
    assert branches(apps["ray"]) == expected


def test_each_node_is_timed_on_its_own(apps: dict[str, Any]) -> None:
    """nap (0.2 s) feeds doze (0.05 s): each node's time is its own, not the time it waited for
    its input, in the request's timings and in what metrics and latency stats record from them.
    (On Ray the first call goes through Serve's router, the later ones over the direct transport.)"""
    from dagserve.observe.metrics import Metrics
    from dagserve.observe.stats import stats_for

    for backend in ("local", "ray"):
        app = apps[backend]
        metrics = Metrics()
        metrics.instrument(app)
        stats = stats_for(app)
        stats.clear()
        for _ in range(3):
            ctx = dagserve.RequestContext()
            assert asyncio.run(app.acall({"case": "timed", "x": 1}, context=ctx)) == 2
            # Ordering with wide margins, not speed: nap slept 0.2 s, doze 0.05 s.
            assert ctx.timings["nap"] >= 0.15 and ctx.timings["doze"] < ctx.timings["nap"], (backend, ctx.timings)
        _, _, _, latency, *_ = metrics._snapshot()
        nap_s, doze_s = latency[("parity", "nap")][-1], latency[("parity", "doze")][-1]  # sums of 3 calls
        assert nap_s >= 0.45 and doze_s < nap_s, (backend, nap_s, doze_s)
        nodes = stats.nodes()
        assert nodes["nap"].p50_s >= 0.15 and nodes["doze"].p50_s < nodes["nap"].p50_s, backend
