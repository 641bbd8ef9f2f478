"""A Ray Serve autoscaling policy that follows the job queue (docs/jobs.md#autoscaling-on-ray).

Give it to the graph's first node; Serve's controller calls it every tick::

    @dagserve.node(autoscaling={
        "min_replicas": 1, "max_replicas": 8,
        "policy": {"policy_function": "dagserve.jobs.autoscale:QueueDepthPolicy",
                   "policy_kwargs": {"store": "redis://10.0.0.5:6379/0", "graph": "reviews",
                                     "jobs_per_replica": 4}},
    })
    class Embed: ...

It asks for enough replicas that each has ``jobs_per_replica`` of the graph's jobs (queued and
running) to work through, and never fewer than Serve's own policy wants for the requests the node
serves; Serve keeps the result within ``min_replicas``..``max_replicas``. The store is read from
Serve's controller, so it must be reachable there: Redis from anywhere, a SQLite file on the same
machine. Ray is imported only when the controller calls the policy.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from dagserve.jobs.store import JobStore

__all__ = ["QueueDepthPolicy"]

log = logging.getLogger("dagserve.jobs")


class QueueDepthPolicy:
    """Serve's class-callable policy: made once with ``policy_kwargs``, called with each tick's
    ``AutoscalingContext``; returns (replicas wanted, the policy's state)."""

    def __init__(self, store: str, graph: str, jobs_per_replica: int = 4) -> None:
        if jobs_per_replica < 1:
            raise ValueError(f"jobs_per_replica={jobs_per_replica!r} must be at least 1.")
        self.where, self.graph, self.jobs_per_replica = os.fspath(store), graph, jobs_per_replica
        self._store: JobStore | None = None

    def jobs(self) -> int:
        """The graph's jobs queued or running now (0 when the store cannot be read)."""
        try:
            if self._store is None:
                from dagserve.jobs.host import open_store

                self._store = open_store(self.where)
            stats = self._store.stats([self.graph])
        except Exception as exc:  # the node still scales on its requests meanwhile
            log.warning("The job queue at %s cannot be read for autoscaling: %s", self.where, exc)
            return 0
        return int(stats["queued"]) + int(stats["running"])

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

        by_requests, state = replica_queue_length_autoscaling_policy(ctx)
        jobs = self.jobs()
        wanted = max(float(by_requests), math.ceil(jobs / self.jobs_per_replica))
        return min(max(wanted, ctx.capacity_adjusted_min_replicas), ctx.capacity_adjusted_max_replicas), state
