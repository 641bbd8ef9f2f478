"""The replica slots and queue (dagserve/runtime/replica_slots.py) on their own: the one mechanism the
local backend and Ray's direct transport both use (their own suites cover it in place:
tests/backends/test_backend_local.py, tests/backends/test_direct.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from dagserve.runtime.replica_slots import QueueFull, ReplicaSlots


@dataclass(eq=False)
class Replica:
    name: str
    ongoing: int = 0
    takes_calls: bool = True
    got: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Waiter:
    name: str
    cancelled: bool = False


def slots(*replicas: Replica, max_ongoing: int = 2, max_queued: int | None = None,
          take_turns: bool = False) -> ReplicaSlots[Replica, Waiter]:
    def hand_over(w: Waiter, r: Replica) -> None:
        if not w.cancelled:  # the owner skips waiters that gave up
            r.ongoing += 1
            r.got.append(w.name)

    s: ReplicaSlots[Replica, Waiter] = ReplicaSlots(hand_over, max_ongoing=max_ongoing, max_queued=max_queued,
                                                    take_turns=take_turns)
    s.replicas = list(replicas)
    return s


def take(s: ReplicaSlots[Replica, Waiter], name: str) -> Replica | None:
    """A new call as an owner makes it: at once on a free replica, else queued."""
    r = s.for_new_call()
    if r is not None:
        r.ongoing += 1
        r.got.append(name)
    else:
        s.wait(Waiter(name))
    return r


def test_a_new_call_goes_to_the_least_busy_replica_that_takes_calls() -> None:
    a, b, c = Replica("a", ongoing=1), Replica("b", ongoing=0, takes_calls=False), Replica("c", ongoing=1)
    s = slots(a, b, c)
    assert s.pick() is a  # b is idle but stopping; a and c tie, the first wins without take_turns
    c.ongoing = 0
    assert s.pick() is c
    a.ongoing = c.ongoing = 2
    assert s.pick() is None and s.for_new_call() is None  # every replica that takes calls is full


def test_taking_turns_spreads_calls_made_one_at_a_time() -> None:
    replicas = [Replica(n) for n in "abc"]
    turns = slots(*replicas, take_turns=True)
    assert [turns.pick().name for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]  # type: ignore[union-attr]
    first = slots(*replicas)
    assert {first.pick().name for _ in range(6)} == {"a"}  # type: ignore[union-attr]


def test_a_freed_slot_goes_to_the_oldest_waiter_and_new_calls_never_overtake() -> None:
    r = Replica("r")
    s = slots(r, max_ongoing=1)
    assert take(s, "first") is r
    take(s, "second")
    take(s, "third")
    assert [w.name for w in s.waiters] == ["second", "third"]
    r.ongoing -= 1  # "first" ends: its slot goes straight to the oldest waiter
    s.freed(r)
    assert r.got == ["first", "second"] and [w.name for w in s.waiters] == ["third"]
    assert take(s, "fourth") is None  # queued behind "third", though nothing is free anyway
    s.max_ongoing = 3  # the limit rises: the owner wakes the queue, oldest first
    s.wake()
    assert r.got == ["first", "second", "third", "fourth"] and not s.waiters


def test_a_new_call_waits_while_others_wait_even_if_a_replica_has_room() -> None:
    r = Replica("r", ongoing=1)
    s = slots(r, max_ongoing=1)
    s.wait(Waiter("waiting"))
    r.ongoing = 0  # room the owner has not handed over yet
    assert s.for_new_call() is None


def test_a_freed_slot_on_a_replica_that_takes_no_calls_goes_to_nobody() -> None:
    r = Replica("stopping", ongoing=1, takes_calls=False)
    s = slots(r, max_ongoing=1)
    s.wait(Waiter("w"))
    r.ongoing = 0
    s.freed(r)
    assert r.got == [] and len(s.waiters) == 1
    r.takes_calls = True  # it takes calls again (a refusing replica's ROOM)
    s.freed(r)
    assert r.got == ["w"]


def test_a_full_queue_raises_queue_full_and_a_refused_call_keeps_its_place_first() -> None:
    r = Replica("r", ongoing=1)
    s = slots(r, max_ongoing=1, max_queued=2)
    take(s, "a")
    take(s, "b")
    with pytest.raises(QueueFull) as full:
        take(s, "c")
    assert (full.value.queued, full.value.max_queued) == (2, 2)
    assert "max_queued_requests=2" in str(full.value)
    s.wait_first(Waiter("refused"))  # it was sent before the others: first, whatever the bound
    assert [w.name for w in s.waiters] == ["refused", "a", "b"]
    r.ongoing = 0
    s.freed(r)
    assert r.got == ["refused"]


def test_a_cancelled_waiter_leaves_the_queue_and_frees_its_place_in_the_bound() -> None:
    r = Replica("r", ongoing=1)
    s = slots(r, max_ongoing=1, max_queued=1)
    gone = Waiter("gone")
    s.wait(gone)
    s.forget(gone)
    s.forget(gone)  # twice is harmless (already handed over, or forgotten)
    take(s, "next")  # the bound counts only who still waits
    assert [w.name for w in s.waiters] == ["next"]


def test_waiters_that_gave_up_are_skipped_by_the_hand_over() -> None:
    r = Replica("r", ongoing=1)
    s = slots(r, max_ongoing=1)
    s.wait(Waiter("gave-up", cancelled=True))
    s.wait(Waiter("waits"))
    r.ongoing = 0
    s.freed(r)
    assert r.got == ["waits"] and r.ongoing == 1 and not s.waiters


def test_no_replica_means_every_call_waits() -> None:
    s = slots()
    assert s.pick() is None
    take(s, "a")
    s.replicas = [Replica("late")]
    s.wake()  # the owner wakes the queue when a replica comes
    assert s.replicas[0].got == ["a"]


def test_near_replicas_take_calls_while_one_has_room_then_the_least_busy_anywhere() -> None:
    far, near1, near2 = Replica("far"), Replica("near1"), Replica("near2")
    s = slots(far, near1, near2, max_ongoing=2, take_turns=True)
    s.near = [near1, near2]
    picked = [take(s, f"c{i}") for i in range(4)]
    assert {r.name for r in picked if r is not None} == {"near1", "near2"}  # never "far" while near has room
    assert near1.ongoing == near2.ongoing == 2 and far.ongoing == 0
    assert take(s, "c4") is far and take(s, "c5") is far  # the near ones are full
    assert take(s, "c6") is None  # every replica full: it waits
    near1.ongoing -= 1
    s.freed(near1)
    assert near1.got[-1] == "c6"
