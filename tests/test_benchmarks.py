"""The benchmarks do the same work everywhere: every system gives every case's expected answer.

Timings are never tested (they live in ``make bench``). Each system is started once for all the
workloads it serves (one Ray instance per Ray-based system, as in a benchmark run), all side by
side, shared by the tests through a module-scoped fixture; the wrk report parser and the hop
slope are unit-tested below.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import check
from benchmarks.systems import SYSTEMS
from benchmarks.workloads import WORKLOADS

#: The systems started side by side here: dagserve's own (the product). The baselines (floor,
#: ray-core, serve-docs, serve-tuned), the ``-def`` variants and the ``cluster`` workload's systems
#: are checked where they run: ``make bench`` verifies every answer it times
#: (``benchmarks/launch.py``), and ``python -m benchmarks.check`` checks any of them alone. Each
#: baseline is one more Ray beside the others: eleven servers side by side did not start on a 2-core
#: machine, and the seven of before cost this module 140-160 s of the suite's 15 minutes.
#: The cross-node transport itself is tested in tests/backends/test_cross_node.py.
LOCAL_SYSTEMS = ["dagserve", "dagserve-inline", "dagserve-local"]
LEFT_TO_THEIR_OWN_CHECK = set(SYSTEMS) - set(LOCAL_SYSTEMS)
CASES = [(w.name, c) for w in WORKLOADS.values() for c in w.cases if w.name != "cluster"]


pytestmark = pytest.mark.ray


#: Seconds a server gets after SIGTERM before its process group is killed. Only the answers are
#: checked here, not a graceful stop: the dagserve server's one (its nine graphs torn down one by
#: one, then its Ray) took 11 s, all of it after the last answer.
STOP_GRACE_S = 1.0


@pytest.fixture(scope="module")
def all_answers() -> dict[str, check.Answers]:
    return check.answers_of_all(LOCAL_SYSTEMS, stop_timeout_s=STOP_GRACE_S)


def test_every_one_machine_workload_is_answered_by_a_system_checked_here() -> None:
    assert set(LOCAL_SYSTEMS) <= set(SYSTEMS)
    served = {w for name in LOCAL_SYSTEMS for w in SYSTEMS[name].workloads}
    assert set(WORKLOADS) - served <= {"cluster"}


@pytest.mark.parametrize("system", LOCAL_SYSTEMS)
def test_system_answers_every_case_it_serves_as_expected(
    system: str, all_answers: dict[str, check.Answers]
) -> None:
    served = [c for w, c in CASES if w in SYSTEMS[system].workloads]
    assert served, f"{system} serves no case"
    for case in served:
        assert all_answers[system][case.name] == [case.expected] * 3, case.name


@pytest.mark.parametrize(("workload", "case"), CASES, ids=[c.name for _, c in CASES])
def test_systems_agree(workload: str, case: Any, all_answers: dict[str, check.Answers]) -> None:
    got = {s: a[case.name] for s, a in all_answers.items() if case.name in a}
    assert got, f"no system serves {case.name}"
    first = next(iter(got.values()))
    assert all(a == first for a in got.values()), got


WRK_REPORT = """Running 2s test @ http://127.0.0.1:8000/chain
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   186.46us   98.96us   2.52s    92.39%
    Req/Sec    21.80k     0.85k   23.39k    72.73%
  Latency Distribution
     50%  139.00us
     75%  253.00us
     90%    1.50ms
     99%    2.52s
  23823 requests in 1.10s, 3.39MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  21665.96
Transfer/sec:      3.08MB
"""


def test_wrk_report_is_read_with_units_and_every_error_counted() -> None:
    from benchmarks import wrk

    result = wrk.parse(WRK_REPORT)
    assert result.p50_ms == pytest.approx(0.139)
    assert result.p99_ms == pytest.approx(2520.0)
    assert result.rps == pytest.approx(21665.96)
    assert (result.requests, result.duration_s) == (23823, pytest.approx(1.1))
    assert result.errors == 1 + 2 + 3 + 4 + 5


def test_wrk_report_without_latency_block_is_refused() -> None:
    from benchmarks import wrk

    without = "\n".join(line for line in WRK_REPORT.splitlines() if "%" not in line or "Stdev" in line)
    with pytest.raises(wrk.WrkError, match="--latency"):
        wrk.parse(without)


def test_hop_slope_is_least_squares() -> None:
    from benchmarks.report import least_squares

    assert least_squares([(1, 3.0), (3, 7.0), (6, 13.0)]) == (pytest.approx(2.0), pytest.approx(1.0))


def test_ratio_targets_compare_req_s_on_the_same_case_and_skip_failed_rows() -> None:
    from benchmarks import report

    rows = [
        {"system": "a", "case": "chain", "rps": 100.0},
        {"system": "a-def", "case": "chain", "rps": 85.0},
        {"system": "a", "case": "hop1", "rps": 100.0},
        {"system": "a-def", "case": "hop1", "rps": 70.0},
        {"system": "b-def", "case": "chain", "rps": None},
    ]
    report.ratio_targets(rows, {"a-def": ("a", 0.8), "b-def": ("b", 0.8)})
    assert (rows[1]["ratio_vs"], rows[1]["meets_ratio_target"]) == (0.85, True)
    assert (rows[3]["ratio_vs"], rows[3]["meets_ratio_target"]) == (0.7, False)
    assert "ratio_vs" not in rows[0] and "ratio_vs" not in rows[4]
    assert "a-def hop1: 0.7x a's req/s misses the >= 0.8x target" in "\n".join(report._notes(rows))


def test_build_workload_times_compile_and_render_of_the_graphs_it_names(tmp_path: Path) -> None:
    """The build workload's compile and render script really builds a 1,000-node chain and draws a
    200-node graph (it asserts both itself); timings are only reported, never checked here."""
    from benchmarks import build

    figures = json.loads(build._python(build._COMPILE_AND_RENDER, str(tmp_path / "wide.svg")))
    assert set(figures) == {"compile_1000", "render_200"} and all(v > 0 for v in figures.values())
    svg = (tmp_path / "wide.svg").read_text()
    assert "l19_n9" in svg and "in_0" in svg  # the last layer and the first are drawn
    recs = build.records({**figures, "import": 0.2, "first_answer": 9.0}, "quick")
    assert {r["case"] for r in recs} == set(build.TARGETS)
    assert all({"workload", "system", "rps", "p50_ms", "p99_ms", "errors", "concurrency"} <= set(r) for r in recs)
    assert [r["meets_target"] for r in recs if r["case"] in ("import", "first_answer")] == [True, True]
    assert "first_answer" in build.table(recs)


# -- issue 32: the socket floor, the targets, the curves and charts ---------------------------------


def test_socket_floor_answers_the_chain_and_hops_over_its_unix_sockets() -> None:
    """socket-floor starts no Ray (three worker processes and a Starlette route): checked here."""
    got = check.answers("socket-floor", stop_timeout_s=STOP_GRACE_S)
    expected = {c.name: c.expected for w in ("chain", "hop") for c in WORKLOADS[w].cases}
    assert got == {name: [answer] * 3 for name, answer in expected.items()}


def test_batched_workload_measures_batching_at_64_8_and_1_connections() -> None:
    cases = {c.name: c for c in WORKLOADS["batched"].cases}
    assert {(c.batching, c.concurrency) for c in cases.values()} == {(b, n) for b in (True, False) for n in (64, 8, 1)}
    assert (cases["batched"].concurrency, cases["unbatched"].concurrency) == (64, 64)  # names kept from earlier runs
    assert cases["batched-c8"].ideal_rps == cases["unbatched-c8"].ideal_rps * 8


def _rec(system: str, case: str, rps: float, p50: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"workload": extra.pop("workload", "chain"), "system": system, "case": case, "rps": rps, "p50_ms": p50,
            "p99_ms": p50 * 2, "concurrency": extra.pop("concurrency", 32), **extra}


def test_targets_are_met_not_met_or_not_measured() -> None:
    from benchmarks import targets

    records = [
        _rec("floor", "chain", 10_000), _rec("socket-floor", "chain", 5_000), _rec("dagserve", "chain", 4_500),
        _rec("dagserve-local", "chain", 5_000), _rec("serve-haproxy", "chain", None),  # type: ignore[arg-type]
    ]
    verdicts = {v.target: v for v in targets.chain_ratios(records)}
    assert verdicts["chain: dagserve >= 0.8x socket-floor req/s"].met is True  # 0.9x
    assert verdicts["chain: dagserve >= 0.3x floor req/s"].met is True
    assert verdicts["chain: dagserve-local >= 0.6x floor req/s"].met is False  # 0.5x
    assert verdicts["chain: dagserve >= 10x serve-haproxy req/s"].met is None  # failed: not measured, never met
    assert "[  NOT MET   ] chain: dagserve-local >= 0.6x floor req/s: 0.5x" in targets.summary(records)


def test_batching_targets_compare_p50_alone_and_throughput_under_load() -> None:
    from benchmarks import targets

    def batched(case: str, rps: float, p50: float, ideal: float, concurrency: int) -> dict[str, Any]:
        return _rec("dagserve-local", case, rps, p50, workload="batched", concurrency=concurrency,
                    ideal_rps=ideal, fraction_of_ideal=rps / ideal)

    records = [
        batched("batched-c1", 49, 20.3, 50, 1), batched("unbatched-c1", 49, 20.0, 50, 1),
        batched("batched-c8", 380, 21, 400, 8), batched("batched", 1200, 50, 1600, 64),
    ]
    met = {v.target.split(":")[0] + " " + v.target.split(" ")[-3]: v.met for v in targets.batching(records)}
    assert list(met.values()) == [True, True, False]  # +0.3 ms alone; 95% at 8; 75% at 64


def test_scaling_targets_judge_the_marginal_cost_per_node_and_the_first_request() -> None:
    from benchmarks import targets

    def point(size: int, p50: float, first: float) -> dict[str, Any]:
        return {"workload": "scaling", "system": "dagserve", "case": f"fanout{size}", "shape": "fanout", "size": size,
                "rps": 1.0, "p50_ms": p50, "first_ms": first}

    flat = [point(1, 1.0, 1.5), point(5, 1.4, 2.0), point(20, 2.9, 9.0)]  # 100 µs per node, then 100
    v = targets.scaling(flat)
    assert [x.met for x in v] == [True, True, True, False]  # the last first request took 3.1x p50
    growing = [point(1, 1.0, 1.0), point(5, 1.4, 1.0), point(20, 4.4, 1.0)]  # 100 µs per node, then 200
    assert targets.scaling(growing)[0].met is False


def test_curve_records_make_a_table_and_charts_are_drawn_from_saved_results(tmp_path: Path) -> None:
    from benchmarks import charts, report

    curve = [_rec(s, "chain", rps, p50, workload="curve", concurrency=c)
             for s, k in (("floor", 3.0), ("dagserve", 1.0)) for c, rps, p50 in ((1, 1000 * k, 0.2), (8, 4000 * k, 0.5))]
    scaling = [{"workload": "scaling", "system": "dagserve", "case": f"map{n}", "shape": "map", "size": n, "rps": 1.0,
                "p50_ms": n * 0.1, "p99_ms": n * 0.2, "first_ms": n * 0.15, "ready_s": 20.0, "rss_mb": 900.0,
                "overhead_us_per_unit": 100.0} for n in (10, 100, 1000)]
    results = tmp_path / "results"
    report.write_json(results / "latest.json", curve)
    report.write_json(results / "scaling.json", scaling)
    table = report.curve_table(curve)
    assert table.splitlines()[2].split() == ["1", "3000", "(0.20/0.40)", "1000", "(0.20/0.40)"]
    assert charts.main(["--results", str(results), "--out", str(tmp_path / "img")]) == 0
    for name in ("bench-curve.svg", "bench-scaling.svg"):
        assert (tmp_path / "img" / name).read_text().lstrip().startswith("<?xml")
    drawn = (tmp_path / "img" / "bench-curve.svg").read_bytes()
    charts.main(["--results", str(results), "--out", str(tmp_path / "img")])
    assert (tmp_path / "img" / "bench-curve.svg").read_bytes() == drawn  # the same records draw the same file


def test_profile_layers_put_each_stack_in_its_innermost_known_layer() -> None:
    from benchmarks.profile_hop import NATIVE_LAYER, layers

    raw = (
        "Runner.run (asyncio/runners.py:118) 7\n"
        "Runner.run (asyncio/runners.py:118);Executor.run (dagserve/runtime/executor.py:179);"
        "Framed._flush (dagserve/backends/ray/direct/frames.py:309) 2\n"
        "Runner.run (asyncio/runners.py:118);Route.handle (starlette/routing.py:289) 1\n"
    )
    total, by = layers(raw)
    assert total == 10
    assert by[NATIVE_LAYER] == 7 and by["direct transport (frames, pickling, socket writes)"] == 2
    assert by["Starlette (routing, request, response)"] == 1


def test_haproxy_left_by_serve_is_stopped_by_pid_and_only_this_runs(tmp_path: Path) -> None:
    """Two processes named haproxy (argv[0]), one reading this run's config, one another run's:
    only the first is stopped."""
    import subprocess
    import sys

    from benchmarks.servers.serve_app import stop_leftover_haproxy

    mine, other = tmp_path / "mine", tmp_path / "other"
    sleeper = "import time; time.sleep(120)"

    def fake_haproxy(state_dir: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["haproxy", "-c", sleeper, "-f", str(state_dir / "haproxy.cfg")], executable=sys.executable)

    left, unrelated = fake_haproxy(mine), fake_haproxy(other)
    try:
        assert stop_leftover_haproxy(mine) == [left.pid]
        assert left.wait(timeout=30) != 0
        assert unrelated.poll() is None
    finally:
        for p in (left, unrelated):
            p.kill()
            p.wait()


def test_scaling_times_the_first_request_on_a_new_connection_and_reads_its_answer() -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from benchmarks.scaling import first_request

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            data = json.dumps({"got": body}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Echo) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            status, answer, ms = first_request(server.server_address[1], {"n": 3})
        finally:
            server.shutdown()
    assert (status, answer) == (200, {"got": {"n": 3}}) and ms > 0
def test_multiplex_bench_draws_zipf_ids_and_computes_random_routing_loads() -> None:
    from benchmarks.multiplex_bench import simulate_random, zipf_ids

    ids = zipf_ids(32, 4000)
    counts = collections.Counter(ids)
    assert ids == zipf_ids(32, 4000)  # one seeded sequence for every system
    assert counts.most_common(1)[0][0] == "m01" and set(counts) <= {f"m{k:02d}" for k in range(1, 33)}
    assert simulate_random(["a", "a", "a"], replicas=1, slots=1) == 1
    assert simulate_random(["a", "b", "a", "b"], replicas=1, slots=1) == 4
    assert simulate_random(["a", "b", "a", "b"], replicas=1, slots=2) == 2


def test_multiplex_bench_bounds_the_hit_ratio_with_a_clairvoyant_cache() -> None:
    from benchmarks.multiplex_bench import best_hit_ratio, simulate_random, zipf_ids

    # Slots 2: a, b load; a hits; c evicts b (needed after a); a hits; b loads: 2 hits of 6.
    assert best_hit_ratio(["a", "b", "a", "c", "a", "b"], 2) == 2 / 6
    assert best_hit_ratio(["a"] * 4, 1) == 3 / 4
    # Never below an LRU of the same slots in one place (random routing over 1 replica).
    ids = zipf_ids(32, 2000)
    assert best_hit_ratio(ids, 16) >= 1 - simulate_random(ids, replicas=1, slots=16) / len(ids)
    # The workload: 4,000 measured requests after the 200 of the warm-up, 16 slots.
    measured = zipf_ids(32, 4200)[200:]
    assert best_hit_ratio(measured, 16) + 16 / 4000 < 0.9
