"""Multiplexed graphs (docs/multiplexing.md) shared by the local and Ray tests.

Models write what happens to them (``load a``, ``close a``, ``unload a``) to a log file whose
path the node takes as a constructor argument, so a test reads what replicas in other processes did.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pydantic import BaseModel

import dagserve


def note(log: str | None, line: str) -> None:
    if log is not None:
        with open(log, "a") as f:
            f.write(f"{line} {os.getpid()}\n")


def events(log: str) -> list[str]:
    """The log's lines without their process ids: ``["load a", "close a", ...]``."""
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [line.rsplit(" ", 1)[0] for line in f.read().splitlines()]


class Weights:
    """A loaded "model": answers with its id; ``close()`` is what eviction calls."""

    def __init__(self, model_id: str, log: str | None) -> None:
        self.model_id = model_id
        self.log = log

    def predict(self, x: Any) -> str:
        return f"{self.model_id}:{x}"

    def close(self) -> None:
        note(self.log, f"close {self.model_id}")


@dagserve.node(num_replicas=2)
class Tenants:
    """Async loader, models released by their close(); ids starting with "bad" fail to load."""

    def __init__(self, log: str | None = None, delay_s: float = 0.02) -> None:
        self.log = log
        self.delay_s = delay_s

    @dagserve.multiplexed(max_models_per_replica=2)
    async def load(self, model_id: str) -> Weights:
        note(self.log, f"load {model_id}")
        await asyncio.sleep(self.delay_s)
        if model_id.startswith("bad"):
            raise ValueError(f"no weights for {model_id}")
        if model_id.startswith("hang"):
            await asyncio.sleep(3600)
        return Weights(model_id, self.log)

    async def __call__(self, x: Any) -> dict[str, Any]:
        model = await self.load(dagserve.model_id())
        return {"model": dagserve.model_id(), "answer": model.predict(x), "pid": os.getpid()}


@dagserve.node
class SyncTenants:
    """A sync loader and node code; ``unload`` releases evicted models (not their close())."""

    def __init__(self, log: str | None = None) -> None:
        self.log = log

    @dagserve.multiplexed(max_models_per_replica=1)
    def load(self, model_id: str) -> Weights:
        note(self.log, f"load {model_id}")
        time.sleep(0.02)
        return Weights(model_id, None)

    def unload(self, model_id: str, model: Weights) -> None:
        note(self.log, f"unload {model_id}")

    def __call__(self, x: Any) -> str:
        return self.load(dagserve.model_id()).predict(x)


@dagserve.node(max_batch_size=8, batch_wait_timeout_s=0.05)
class BatchedTenants:
    """Batched: each batch reports the model id it ran with and the items it held."""

    @dagserve.multiplexed(max_models_per_replica=4)
    async def load(self, model_id: str) -> str:
        return model_id

    async def __call__(self, items: list[str]) -> list[dict[str, Any]]:
        model = await self.load(dagserve.model_id())
        # A batch takes a while, so the calls of a burst queue behind it however slowly a loaded
        # machine sends them: the batcher sends the first call at once (it expects a crowd of one)
        # and would run every call alone if each ended before the next arrived.
        await asyncio.sleep(0.3)
        return [{"model": model, "batch": items} for _ in items]


class Request(BaseModel):
    x: int
    tenant: str | None = None


def tenants(log: str | None = None, replicas: int = 2) -> dagserve.Graph:
    """``Tenants`` with the model id from the payload's "tenant" (or the x-dagserve-model-id header)."""
    node = Tenants(log)
    if replicas != 2:
        node = node.options(num_replicas=replicas)
    with dagserve.Input(schema=Request) as inp:
        return dagserve.Graph(node(inp["x"], model_id=inp["tenant"]), name="tenants")


@dagserve.node
def tenant_of(x: int) -> str:
    return f"t{x % 3}"


def computed(log: str | None = None) -> dagserve.Graph:
    """The model id computed by another node."""
    with dagserve.Input() as inp:
        return dagserve.Graph(Tenants(log)(inp["x"], model_id=tenant_of(inp["x"])), name="computed")


def sync_tenants(log: str | None = None) -> dagserve.Graph:
    with dagserve.Input() as inp:
        return dagserve.Graph(SyncTenants(log)(inp["x"], model_id=inp["tenant"]), name="sync_tenants")


def batched() -> dagserve.Graph:
    with dagserve.Input() as inp:
        return dagserve.Graph(BatchedTenants()(inp["x"], model_id=inp["tenant"]), name="batched_tenants")


def guarded(log: str | None = None) -> dagserve.Graph:
    """A failing or hanging load under optional(...) and a timeout."""
    node = Tenants(log).options(num_replicas=1, timeout_s=1.0)
    with dagserve.Input() as inp:
        out = dagserve.optional(node(inp["x"], model_id=inp["tenant"]), default="skipped")
        return dagserve.Graph(out, name="guarded")
