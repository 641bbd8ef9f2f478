"""Replica slots: which of a node's replicas takes a call, and the queue while all are full.

One mechanism for every backend that holds a node's calls itself: the local backend's
in-process replicas and the Ray backend's direct transport (its :class:`DirectPool`).

* Each replica holds at most ``max_ongoing`` calls (the node's per-replica
  ``max_ongoing_requests``).
* A new call goes to the replica with the fewest calls in flight that may take one; when the
  owner names ``near`` replicas (the direct transport: those on the caller's own Ray node), to the
  least busy of those that has room, and to the least busy anywhere only when none has.
* While every replica is full, calls wait in one FIFO queue of at most ``max_queued``
  (``max_queued_requests``; ``None``: unbounded); past it, :class:`QueueFull` at once (the
  backend turns it into :class:`~dagserve.OverloadedError`, HTTP 503).
* A call for model ``m`` of a multiplexed node (docs/multiplexing.md) goes to the least busy replica
  that holds ``m`` and has room; when none does, to the replica with room holding the fewest
  models (ties: fewest calls in flight, then random), which loads it. Each replica's ``models``
  (the ids it holds or loads) come from its reports; the slots add ``m`` to the chosen one's at
  once, so the calls for ``m`` that follow before its next report go there too.
* A new call never overtakes a waiting one, and a freed slot goes straight to the oldest
  waiter: no retry timer.
* A cancelled waiter leaves the queue (:meth:`ReplicaSlots.forget`).

The owner counts: a replica reports the calls it holds (``ongoing``) and whether it may be sent
one now at all (``takes_calls``: not stopping, not refusing); the owner's ``hand_over(waiter,
replica)`` gives a waiter its slot (and skips waiters that were cancelled meanwhile). The owner
also says when room appears: :meth:`ReplicaSlots.freed` when a replica's call ends or it takes
calls again, :meth:`ReplicaSlots.wake` when replicas come or the limit rises. So while calls
wait, no replica has room, and neither queueing nor a freed slot needs to look at every replica
(the hot path stays a few attribute reads).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import random
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["QueueFull", "ReplicaSlots", "SlotHolder"]


class SlotHolder(Protocol):
    """What :class:`ReplicaSlots` reads of a replica."""

    @property
    def ongoing(self) -> int:
        """Calls it holds now."""
        ...

    @property
    def takes_calls(self) -> bool:
        """May it be sent a call now, its count aside (``False`` while it stops or refuses)?"""
        ...

    #: The model ids it holds or loads (multiplexed nodes; an empty set for the others).
    models: frozenset[str]


R = TypeVar("R", bound=SlotHolder)
W = TypeVar("W")


class QueueFull(Exception):
    """Every replica holds ``max_ongoing_requests`` calls and the queue holds ``max_queued_requests``."""

    def __init__(self, queued: int, max_queued: int) -> None:
        super().__init__(f"{queued} calls wait (max_queued_requests={max_queued})")
        self.queued = queued
        self.max_queued = max_queued


class ReplicaSlots(Generic[R, W]):
    """A node's replicas (``replicas``, replaced whole when they change), their slots and the queue.

    ``take_turns``: among equally busy replicas, start the search one further each time, so calls
    made one at a time still spread over every replica (the direct transport, like Serve's router);
    without it the first in ``replicas`` wins (the local backend).
    """

    __slots__ = ("hand_over", "max_ongoing", "max_queued", "near", "replicas", "take_turns", "waiters", "_turn")

    def __init__(
        self,
        hand_over: Callable[[W, R], None],
        *,
        max_ongoing: int,
        max_queued: int | None,
        take_turns: bool = False,
    ) -> None:
        self.hand_over = hand_over
        self.max_ongoing = max_ongoing
        self.max_queued = max_queued
        self.take_turns = take_turns
        self.replicas: list[R] = []
        #: Replicas to prefer while one has room (a part of ``replicas``; empty: no preference).
        self.near: list[R] = []
        self.waiters: collections.deque[W] = collections.deque()
        self._turn = itertools.count()

    def pick(self, model: str | None = None) -> R | None:
        """The replica with the fewest calls that may take one more (of ``near`` ones first, when
        one of them has room), or for ``model`` the one :meth:`_for_model` says; ``None`` when all
        are full."""
        if model is not None:
            return self._for_model(model)
        if self.near:
            best = self._least_busy(self.near)
            if best is not None:
                return best
        return self._least_busy(self.replicas)

    def _least_busy(self, ring: list[R]) -> R | None:
        n = len(ring)
        if not n:
            return None
        if self.take_turns:
            start = next(self._turn) % n
            if start:
                ring = ring[start:] + ring[:start]
        best: R | None = None
        fewest = self.max_ongoing
        for r in ring:
            busy = r.ongoing
            if busy < fewest and r.takes_calls:
                best, fewest = r, busy
        return best

    def _for_model(self, model: str) -> R | None:
        """A holder of ``model`` with room (the least busy), else the replica with room holding the
        fewest models (then the least busy, then at random), which is noted as holding it now."""
        limit = self.max_ongoing
        free = [r for r in self.replicas if r.ongoing < limit and r.takes_calls]
        if not free:
            return None
        holders = [r for r in free if model in r.models]
        if holders:
            return min(holders, key=_busy)
        fewest = min(len(r.models) for r in free)
        free = [r for r in free if len(r.models) == fewest]
        least = min(r.ongoing for r in free)
        chosen = random.choice([r for r in free if r.ongoing == least])
        chosen.models = chosen.models | {model}
        return chosen

    def for_new_call(self, model: str | None = None) -> R | None:
        """The replica a new call (for ``model``, of a multiplexed node) may go to at once, or
        ``None``: it must :meth:`wait` (every replica is full, or calls already wait; they go first)."""
        return None if self.waiters else self.pick(model)

    def wait(self, waiter: W) -> None:
        """Queue ``waiter`` last (no replica had room for it), or raise :class:`QueueFull`."""
        cap = self.max_queued
        if cap is not None and len(self.waiters) >= cap:
            raise QueueFull(len(self.waiters), cap)
        self.waiters.append(waiter)

    def wait_first(self, waiter: W) -> None:
        """Queue ``waiter`` ahead of every other, whatever the bound: a call a replica refused
        before running it keeps its place."""
        self.waiters.appendleft(waiter)

    def freed(self, replica: R) -> None:
        """``replica`` has room again (a call on it ended, or it takes calls again): the oldest
        waiters take it, straight away."""
        waiters = self.waiters
        limit = self.max_ongoing
        while waiters and replica.ongoing < limit and replica.takes_calls:
            self.hand_over(waiters.popleft(), replica)

    def wake(self) -> None:
        """Hand the room of every replica to the oldest waiters (replicas came, the limit rose)."""
        waiters = self.waiters
        while waiters:
            r = self.pick()
            if r is None:
                return
            self.hand_over(waiters.popleft(), r)

    def forget(self, waiter: W) -> None:
        """``waiter`` gave up (cancelled): it leaves the queue and no longer counts against the bound."""
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)


def _busy(replica: SlotHolder) -> int:
    return replica.ongoing
