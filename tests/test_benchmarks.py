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


def test_multiplex_bench_draws_zipf_ids_and_computes_random_routing_loads() -> None:
    from benchmarks.multiplex_bench import simulate_random, zipf_ids

    ids = zipf_ids(32, 4000)
    counts = collections.Counter(ids)
    assert ids == zipf_ids(32, 4000)  # one seeded sequence for every system
    assert counts.most_common(1)[0][0] == "m01" and set(counts) <= {f"m{k:02d}" for k in range(1, 33)}
    assert simulate_random(["a", "a", "a"], replicas=1, slots=1) == 1
    assert simulate_random(["a", "b", "a", "b"], replicas=1, slots=1) == 4
    assert simulate_random(["a", "b", "a", "b"], replicas=1, slots=2) == 2
