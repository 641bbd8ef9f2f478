"""A multiplexed node's models in a Ray replica: its cache, and telling routers what it holds.

The cache is :class:`~dagserve.runtime.multiplex.ModelCache` (the same as in the local backend).
Whenever the ids it holds or loads change, the replica tells

* every caller connected over the direct transport, with a ``MODELS`` notice (``direct/``) holding
  :meth:`ReplicaModels.report`: the caller's :class:`~dagserve.backends.ray.direct.pool.DirectPool`
  routes by its ``ids`` and ``status()`` shows the rest (the counters also go out every
  ``REPORT_INTERVAL_S`` while they change);
* Serve's controller (``RequestRoutingInfo.multiplexed_model_ids``, as ``@serve.multiplexed``
  does), so calls through Serve handles made with ``multiplexed_model_id`` go to holders too.

Reports to the controller are coalesced: at most one in flight, the latest ids sent next.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from dagserve.runtime.multiplex import ModelCache, attach_cache

if TYPE_CHECKING:
    from dagserve.backends.ray.direct.replica_server import ReplicaServer

__all__ = ["REPORT_INTERVAL_S", "ReplicaModels"]

log = logging.getLogger("dagserve.ray")

#: How often a replica sends its callers its counters (hits, misses...) while they change.
REPORT_INTERVAL_S = 1.0


class ReplicaModels:
    """The models of one replica (built with the replica, on its event loop)."""

    def __init__(self, instance: Any, loader: str) -> None:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # outside Serve (tests): no reports
            self._loop = None
        self.cache: ModelCache = attach_cache(instance, loader, self._changed)
        #: The direct transport's server, once it listens (the replica sets it).
        self.server: ReplicaServer | None = None
        self._pushing = False
        self._dirty = False
        self._sent: dict[str, Any] | None = None
        self.replica = _replica_id()
        if self._loop is not None:
            self._loop.call_later(REPORT_INTERVAL_S, self._tick)

    def report(self) -> dict[str, Any]:
        """The cache's report, with the ids it holds or loads (``ids``) and this replica's id."""
        out = self.cache.report()
        out["ids"] = sorted(self.cache.ids())
        out["replica"] = self.replica
        return out

    def announce(self) -> None:
        """Send the report to every direct caller (when it changed since the last one)."""
        if self.server is None:
            return  # no direct callers (yet): Serve's router learns the ids from the controller
        report = self.report()
        if report != self._sent:
            self._sent = report
            self.server.announce_models(report)

    def _tick(self) -> None:
        if self.server is not None and self.server.closed:
            return
        self.announce()
        assert self._loop is not None
        self._loop.call_later(REPORT_INTERVAL_S, self._tick)

    def _changed(self) -> None:
        """The cache's ids changed (on the loop, or on a sync loader's thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._tell()
        else:
            loop.call_soon_threadsafe(self._tell)

    def _tell(self) -> None:
        self.announce()
        ids = tuple(sorted(self.cache.ids()))
        if self._pushing:
            self._dirty = True
            return
        self._pushing = True
        assert self._loop is not None
        self._loop.run_in_executor(None, self._push, ids).add_done_callback(self._pushed)

    def _pushed(self, _: Any) -> None:
        self._pushing = False
        if self._dirty:
            self._dirty = False
            self._tell()

    @staticmethod
    def _push(ids: tuple[str, ...]) -> None:
        """Serve's controller learns the ids (its handles' routers route by them)."""
        try:
            from ray.serve._private.common import RequestRoutingInfo
            from ray.serve.context import _get_global_client, _get_internal_replica_context

            context = _get_internal_replica_context()
            if context is None:
                return
            _get_global_client().record_request_routing_info(
                RequestRoutingInfo(replica_id=context.replica_id, multiplexed_model_ids=list(ids))
            )
        except Exception as exc:  # noqa: BLE001 - Serve's routing then ignores the models; calls still work
            log.warning("Telling Serve the models this replica holds failed: %s: %s", type(exc).__name__, exc)


def _replica_id() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside Serve (tests)
        return "replica"
