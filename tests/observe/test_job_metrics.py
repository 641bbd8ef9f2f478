"""The job queue's Prometheus series and the jobs line of ``dagserve status``."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

import dagserve
from dagserve.cli.ops import _jobs
from dagserve.observe.metrics import Metrics
from tests import job_graphs


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_queue_depth_age_outcomes_and_run_time() -> None:
    metrics = Metrics()
    with dagserve.deploy(job_graphs.work, backend="local", jobs=dagserve.JobSettings(concurrency=1)) as app:
        metrics.instrument(app)
        assert not any(name.startswith("dagserve_jobs") for name, _ in samples(metrics))  # unused: no series
        app.submit({"n": 1}).result(timeout=30)
        try:
            app.submit({"n": -1}).result(timeout=30)
        except dagserve.NodeError:
            pass
        blocker = app.submit({"n": 1, "sleep": 60})
        waiting = [app.submit({"n": i}) for i in range(3)]
        deadline = time.monotonic() + 20
        while (app.status().jobs or {}).get("running_here") != 1:  # claimed in the store and running here
            assert time.monotonic() < deadline
            time.sleep(0.02)
        got = samples(metrics)
        graph = (("graph", "work"),)
        assert got[("dagserve_jobs_queued", graph)] == 3
        assert got[("dagserve_jobs_running", graph)] == 1
        assert got[("dagserve_jobs_oldest_age_seconds", graph)] > 0
        assert got[("dagserve_jobs_total", (("graph", "work"), ("outcome", "succeeded")))] == 1
        assert got[("dagserve_jobs_total", (("graph", "work"), ("outcome", "failed")))] == 1
        assert got[("dagserve_job_run_seconds_count", graph)] == 2
        line = _jobs(app.status().to_dict())
        assert line and "3 queued (oldest waiting" in line[0] and "1 running (1 here, at most 1 at once)" in line[0]
        for job in [blocker, *waiting]:
            job.cancel()
