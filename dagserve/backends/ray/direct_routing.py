"""The Ray backend's side of the direct transport (``direct/``): whether it applies, which nodes'
calls take it, and the :class:`~.direct.DirectPool` of each such node.

Calls skip Serve's router when this process is on the cluster (not Ray Client): to replicas on
its own Ray node over their Unix sockets, to replicas on other Ray nodes over TCP after the token
handshake (``direct/auth.py``; addresses from Ray's KV store, ``direct/registry.py``). A cluster
of several Ray nodes without token authentication has no cross-node transport: its calls all go
through Serve (so no replica is left out), and this is logged and reported in ``status()``.
Only nodes with a fixed replica count go direct (Serve's autoscaler counts the requests its own
handles route), and only once the node's pool has connected to a replica; the others go through
Serve. Ray is asked again every ``_DIRECT_RECHECK_S``. ``direct_transport=False`` or
``DAGSERVE_DIRECT_TRANSPORT=0`` turn it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dagserve._errors import DeployError
from dagserve.backends.ray.direct import registry
from dagserve.backends.ray.direct.auth import ray_token_key
from dagserve.backends.ray.direct.directory import replica_stats, socket_dir
from dagserve.backends.ray.direct.pool import DirectPool
from dagserve.backends.ray.direct.frames import DEFAULT_MAX_FRAME_BYTES, FrameLimits

if TYPE_CHECKING:
    from dagserve._options import NodeOptions
    from dagserve.compiler.plan import DeploymentSpec
    from dagserve.runtime.status import NodeStatus

__all__ = [
    "DIRECT_ENV",
    "MAX_FRAME_ENV",
    "NOT_CALLED",
    "NO_TOKEN",
    "DirectRouting",
    "announce",
    "cross_node_listener",
    "frame_limits",
    "on_loop_thread",
    "withdraw",
]

log = logging.getLogger("dagserve.ray")

#: Set to "0" to send every call through Serve's router (same as ``direct_transport=False``).
DIRECT_ENV = "DAGSERVE_DIRECT_TRANSPORT"
#: The default of ``direct_max_frame_bytes`` (bytes per call's pickled arguments or result).
MAX_FRAME_ENV = "DAGSERVE_DIRECT_MAX_FRAME_BYTES"
#: How often the ingress asks Ray again for its nodes (a cluster may grow or shrink).
_DIRECT_RECHECK_S = 10.0
#: How often ``prepare`` looks whether the pools it opened have connected.
_PREPARE_POLL_S = 0.02
#: Why there is no cross-node transport on a cluster without token authentication.
NO_TOKEN = (
    "cross-node transport off: the Ray cluster runs without token authentication (RAY_AUTH_MODE=token "
    "turns it on), so calls to replicas on other Ray nodes go through Serve"
)


#: A node's transport before its first call (the direct pool opens then).
NOT_CALLED = "no calls yet"


class DirectRouting:
    """One backend's direct pools, and whether its calls may use them.

    ``enabled`` is the backend's ``direct_transport``; ``limits`` what one call may carry.
    ``pools`` maps a node to its pool, or to ``None`` when it has no private socket directory.
    """

    def __init__(self, enabled: bool, limits: FrameLimits) -> None:
        self.enabled = enabled
        self.limits = limits
        self.pools: dict[str, DirectPool | None] = {}
        self.cluster: str | None = None  # the Ray cluster's GCS address, while direct applies
        self.node_id = ""  # this process's Ray node
        self.single = False  # is the cluster one Ray node?
        self.key: bytes | None = None  # the token handshake's key (None: no cross-node transport)
        self.note: str | None = None  # why calls go through Serve although direct is on
        self.checked = 0.0

    def pool_for(self, name: str, app_name: str, limits: tuple[int, int | None]) -> DirectPool | None:
        """The usable pool of a node whose calls may skip Serve's router (``limits``: its pool's
        ``(max_ongoing, max_queued)``), else ``None`` (``transports.choose_transport`` asks).

        The first call opens the node's pool, which connects in the background (until then, and
        whenever no replica accepts calls, Serve routes them). Runs on the caller's event loop.
        """
        cluster = self.cluster
        if cluster is None:
            return None
        if time.monotonic() - self.checked > _DIRECT_RECHECK_S:
            self.checked = time.monotonic()  # a cluster may grow: look again, off the loop
            asyncio.get_running_loop().run_in_executor(None, self.check)
        pool = self.pools.get(name)
        if pool is None:
            if name in self.pools:
                return None  # no private socket directory (logged once)
            directory = socket_dir(cluster, app_name, name, self.node_id)
            if directory is None:
                self.pools[name] = None
                return None
            self.pools[name] = self._open(directory, name, app_name, limits)
            return None  # it connects in the background; this call goes through Serve
        return pool if pool.usable else None

    def _open(self, directory: str, name: str, app_name: str, limits: tuple[int, int | None]) -> DirectPool:
        """A pool for the node's replicas: on this Ray node, and on the others when a key is known."""
        loop = asyncio.get_running_loop()
        me = self.node_id

        async def remote() -> dict[str, tuple[str, int]]:
            if self.key is None or self.single:
                return {}  # one Ray node: every replica is on its sockets
            found = await loop.run_in_executor(None, registry.listing, app_name, name)
            return {e.replica: (e.host, e.port) for e in found if e.node_id != me}

        def stale(replica: str) -> None:
            loop.run_in_executor(None, withdraw, app_name, name, replica)

        return DirectPool(
            directory,
            max_ongoing=limits[0],
            max_queued=limits[1],
            loop=loop,
            limits=self.limits,
            remote=remote,
            auth_key=self.key,
            on_stale=stale,
        )

    async def prepare(self, specs: list[DeploymentSpec], app_name: str, timeout_s: float) -> None:
        """Open the pools of ``specs``' direct-eligible nodes now, on the running loop, and wait (at
        most ``timeout_s``) until each has a replica connected: the first request then goes direct
        like the later ones, not through Serve's router while the pools connect."""
        if self.cluster is None:
            return
        for spec in specs:
            limits = direct_limits(spec)
            if limits is not None:
                self.pool_for(spec.name, app_name, limits)  # opens the pool, which connects in the background
        pools = [p for p in (self.pools.get(s.name) for s in specs) if p is not None]
        deadline = time.monotonic() + timeout_s
        while not all(p.usable for p in pools) and time.monotonic() < deadline:
            await asyncio.sleep(_PREPARE_POLL_S)

    def is_direct(self, spec: DeploymentSpec) -> bool:
        """Do the node's calls go direct now?"""
        pool = self.pools.get(spec.name)
        return self.cluster is not None and direct_limits(spec) is not None and pool is not None and pool.usable

    def transport(self, spec: DeploymentSpec) -> tuple[str, dict[str, int]]:
        """How the node's calls travel now: ``"local socket"``, ``"cross-node"``, ``"mixed"``
        (both, counted per replica in the dict) or ``"serve"``."""
        pool = self.pools.get(spec.name)
        counts = pool.transports() if pool is not None and self.is_direct(spec) else {}
        if not counts:
            return "serve", {}
        return (next(iter(counts)) if len(counts) == 1 else "mixed"), counts

    def report(self, nodes: dict[str, NodeStatus], specs: dict[str, DeploymentSpec]) -> dict[str, NodeStatus]:
        """``nodes`` with each one's transport filled in (see :class:`~dagserve.NodeStatus`)."""
        out = {}
        for name, node in nodes.items():
            spec = specs.get(name)
            if spec is None or spec.inline:
                out[name] = replace(node, transport="inline")
                continue
            if self.cluster is not None and (direct_limits(spec) is not None) and name not in self.pools:
                # The pool opens at the node's first call: until then no transport is chosen.
                out[name] = replace(node, transport=NOT_CALLED)
                continue
            kind, counts = self.transport(spec)
            note = self.note if kind == "serve" and self.enabled else None
            if kind == "serve" and note is None and self.enabled and not (direct_limits(spec) is not None):
                note = "autoscaled: Serve routes its calls, so its autoscaler sees them"
            out[name] = replace(node, transport=kind, transport_replicas=counts, transport_note=note)
        return out

    def replica_stats(self, name: str, loop: asyncio.AbstractEventLoop | None) -> list[Any] | None:
        """The stats of every replica of node ``name`` its pool reaches (on other Ray nodes too),
        asked on ``loop`` (the pool's) from another thread; ``None`` when it has no usable pool."""
        pool = self.pools.get(name)
        if pool is None or not pool.usable or loop is None or not loop.is_running() or on_loop_thread(loop):
            return None
        try:
            return asyncio.run_coroutine_threadsafe(pool.stats(), loop).result(5.0)
        except Exception:  # noqa: BLE001 - stats are best effort
            return None

    def stats(self, name: str, app_name: str, loop: asyncio.AbstractEventLoop | None) -> list[dict[str, Any]]:
        """What every replica of node ``name`` answers to ``STATS`` (``batches``, ``refusals``):
        on one Ray node straight from the replicas' sockets (whichever way the calls went), else
        over the pool's connections (across nodes too); ``[]`` when none can be asked."""
        if self.cluster is not None and self.single and asyncio._get_running_loop() is None:
            directory = socket_dir(self.cluster, app_name, name, self.node_id)
            try:
                found = replica_stats(directory) if directory is not None else []
            except Exception:  # noqa: BLE001 - stats are best effort
                found = []
            if found:
                return found
        return self.replica_stats(name, loop) or []

    def transport_refusals(
        self, names: list[str], app_name: str, loop: asyncio.AbstractEventLoop | None
    ) -> dict[tuple[str, str, str], int]:
        """``(node, side, reason) -> count`` of what the direct transport refused for nodes
        ``names``: ``side`` is ``"caller"`` (this process's connections to the node's replicas)
        or ``"replica"`` (the node's replicas, from their stats)."""
        out: dict[tuple[str, str, str], int] = {}
        for name in names:
            pool = self.pools.get(name)
            for reason, n in (pool.transport_refusals if pool is not None else {}).items():
                out[(name, "caller", reason)] = n
            for found in self.stats(name, app_name, loop):
                for reason, n in (found.get("refusals") or {}).items():
                    out[(name, "replica", reason)] = out.get((name, "replica", reason), 0) + int(n)
        return out

    def refusals(self) -> dict[str, int]:
        """Per node, the direct calls a full replica refused (see ``RayBackend.direct_refusals``)."""
        return {name: pool.refusals for name, pool in self.pools.items() if pool is not None}

    def options(self) -> dict[str, Any]:
        """These settings as ``RayBackend`` keyword arguments, for a backend attached elsewhere."""
        return {"direct_max_frame_bytes": self.limits.max_bytes, "direct_frame_timeout_s": self.limits.timeout_s}

    def check(self) -> None:
        """Does the direct transport apply (asked of Ray: connected locally; with a token for
        several Ray nodes)?"""
        self.checked = time.monotonic()
        if not self.enabled or os.environ.get(DIRECT_ENV, "1") == "0":
            self.cluster = None
            return
        try:
            import ray

            if ray.util.client.ray.is_connected():
                self.cluster = None  # Ray Client: this process is not on the cluster
                return
            alive = [n for n in ray.nodes() if n.get("Alive")]
            self.single = len(alive) == 1
            self.key = ray_token_key()
            self.node_id = ray.get_runtime_context().get_node_id()
            note = None if self.single or self.key is not None else NO_TOKEN
            if note is not None and self.note is None:
                log.warning("Direct transport: %s.", note)
            self.note = note
            self.cluster = ray.get_runtime_context().gcs_address if note is None else None
        except Exception as exc:  # noqa: BLE001 - without an answer, Serve routes every call
            log.warning("Direct transport off: asking Ray for its nodes failed (%s: %s)", type(exc).__name__, exc)
            self.cluster = None

    def set_limits(self, name: str, options: NodeOptions, loop: asyncio.AbstractEventLoop | None) -> None:
        """A node's queue bounds changed (scale, update): its pool holds to the new ones."""
        pool = self.pools.get(name)
        if pool is None:
            return
        limits = (options.effective_max_ongoing_requests, options.max_queued_requests)
        if loop is not None and loop.is_running() and not on_loop_thread(loop):
            loop.call_soon_threadsafe(pool.set_limits, *limits)
        else:
            pool.set_limits(*limits)

    def close(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Close every pool, on ``loop`` (the one that opened them); forget them all."""
        pools = [p for p in self.pools.values() if p is not None]
        self.pools = {}
        if not pools or loop is None:
            return
        if loop.is_closed() or not loop.is_running():
            for pool in pools:
                pool.abandon()  # nothing runs that loop any more: just hang up
            return
        if on_loop_thread(loop):
            for pool in pools:
                pool.close()
        else:
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile: nothing to close
                for pool in pools:
                    loop.call_soon_threadsafe(pool.close)


def frame_limits(max_bytes: int | None, timeout_s: float) -> FrameLimits:
    """The direct transport's frame limits from the backend's options (or the environment)."""
    given: Any = max_bytes
    source = "direct_max_frame_bytes"
    if given is None:
        given = os.environ.get(MAX_FRAME_ENV, "").strip() or DEFAULT_MAX_FRAME_BYTES
        source = MAX_FRAME_ENV
        with contextlib.suppress(ValueError):
            given = int(given)
    if isinstance(given, bool) or not isinstance(given, int) or given < 1:
        raise DeployError(f"{source} must be a whole number of bytes >= 1, got {given!r}.")
    max_bytes = given
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise DeployError(f"direct_frame_timeout_s must be a number of seconds > 0, got {timeout_s!r}.")
    return FrameLimits(max_bytes, float(timeout_s))


def direct_limits(spec: DeploymentSpec) -> tuple[int, int | None] | None:
    """A direct pool's ``(max_ongoing, max_queued)`` for a node whose calls may go direct (a fixed
    replica count: Serve's autoscaler sees just the requests its handles route), else ``None``."""
    return spec.options.fixed_bounds()


def on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    """Is ``loop`` the loop running in this thread?"""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def cross_node_listener(node: str) -> tuple[bytes | None, str | None]:
    """In a replica: the key and host of its cross-node listener (this Ray node's address), or
    ``(None, None)`` when the cluster has no token authentication (logged: it never listens then)."""
    key = ray_token_key()
    if key is None:
        log.warning("Node %r: %s.", node, NO_TOKEN)
        return None, None
    import ray

    return key, ray.util.get_node_ip_address()


def announce(app: str, deployment: str, replica: str, node_id: str, address: tuple[str, int]) -> None:
    """A replica's cross-node address, put where callers on other Ray nodes look (blocking)."""
    try:
        registry.register(app, deployment, registry.Entry(replica, node_id, address[0], int(address[1])))
    except Exception as exc:  # noqa: BLE001 - callers on other nodes then go through Serve
        log.warning("Node %r: cannot announce its cross-node address (%s: %s)", deployment, type(exc).__name__, exc)


def withdraw(app: str, deployment: str, replica: str) -> None:
    """Remove a replica's cross-node address (it stops, or nobody listens there any more; blocking)."""
    with contextlib.suppress(Exception):  # best effort: callers drop addresses that refuse them
        registry.forget(app, deployment, replica)
