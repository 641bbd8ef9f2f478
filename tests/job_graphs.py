"""Graphs the job tests serve (importable by ``dagserve run`` and by Ray's replicas).

``work``: sleeps ``payload["sleep"]`` seconds (default 0) and answers ``{"n": payload["n"] * 2}``;
``n == -1`` fails with ValueError. Each run appends the job's id (the request id of a job) to the
file named by ``$DAGSERVE_TEST_RUN_LOG``, when set, so that a test can count runs per job.
``stream``: a streaming graph yielding ``payload["n"]`` items.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import dagserve


@dagserve.node
async def double(payload: dict) -> dict:
    log = os.environ.get("DAGSERVE_TEST_RUN_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(dagserve.current_request_id() + "\n")
    await asyncio.sleep(float(payload.get("sleep", 0)))
    if payload["n"] == -1:
        raise ValueError("n must not be -1")
    return {"n": payload["n"] * 2}


@dagserve.node
async def count(payload: dict) -> AsyncIterator[int]:
    for i in range(payload["n"]):
        yield i


with dagserve.Input() as inp:
    work = dagserve.Graph(double(inp), name="work")

with dagserve.Input() as inp:
    stream = dagserve.Graph(count(inp), name="stream")

#: Both, served together.
both = [work, stream]


@dagserve.node(max_ongoing_requests=2, max_queued_requests=2)
async def narrow(payload: dict) -> dict:
    await asyncio.sleep(float(payload.get("sleep", 0.05)))
    return {"n": payload["n"]}


with dagserve.Input() as inp:
    #: A node that takes 2 calls at once and queues 2 more (a fifth gets 503).
    tight = dagserve.Graph(narrow(inp), name="tight")


@dagserve.node(
    max_ongoing_requests=2,
    autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0,
                 "metrics_interval_s": 0.5, "look_back_period_s": 1, "downscale_delay_s": 600},
)
async def first(payload: dict) -> dict:
    await asyncio.sleep(float(payload.get("sleep", 0.5)))
    return {"n": payload["n"]}


with dagserve.Input() as inp:
    #: An autoscaling first node (1-2 replicas, 1 request each as the target).
    scaled = dagserve.Graph(first(inp), name="scaled")


def queue_scaled() -> dagserve.Graph:
    """A first node scaled by the job queue's depth (dagserve.jobs.autoscale), 1-2 replicas."""
    policy = {"policy_function": "dagserve.jobs.autoscale:QueueDepthPolicy",
              "policy_kwargs": {"store": os.environ["DAGSERVE_TEST_QUEUE_DB"], "graph": "queue_scaled",
                                "jobs_per_replica": 5}}

    @dagserve.node(autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 100,
                                "upscale_delay_s": 0, "metrics_interval_s": 0.5, "look_back_period_s": 1,
                                "downscale_delay_s": 600, "policy": policy})
    async def deep(payload: dict) -> dict:
        await asyncio.sleep(float(payload.get("sleep", 0.5)))
        return {"n": payload["n"]}

    with dagserve.Input() as inp:
        return dagserve.Graph(deep(inp), name="queue_scaled")
