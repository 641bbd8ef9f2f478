"""runtime/heap.py: the collector settings a serving process takes once started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from dagserve.runtime.heap import GC_ENV, YOUNG_THRESHOLD, settle_heap, settled_heap


@pytest.fixture
def collector() -> Iterator[None]:
    """Gives the process's collector back as it was (unfrozen, its thresholds)."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_settle_heap_freezes_what_is_alive_and_spaces_young_collections_out(collector: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GC_ENV, raising=False)
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    alive = [[i] for i in range(100)]  # container objects the collector tracks
    assert settle_heap() is True
    assert gc.get_freeze_count() >= len(alive)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
    # A cycle made afterwards is still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def test_settle_heap_keeps_a_higher_threshold_and_can_be_turned_off(collector: None, monkeypatch: pytest.MonkeyPatch) -> None:
    gc.unfreeze()
    gc.set_threshold(50_000, 10, 10)
    assert settle_heap() is True
    assert gc.get_threshold() == (50_000, 10, 10)
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    monkeypatch.setenv(GC_ENV, "0")
    assert settle_heap() is False
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == (700, 10, 10)


def test_settled_heap_gives_the_collector_back_afterwards(collector: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GC_ENV, raising=False)
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    with pytest.raises(OSError):  # as dagserve.serve when the port is taken
        with settled_heap():
            assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == YOUNG_THRESHOLD
            raise OSError("address in use")
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == (700, 10, 10)


def test_settled_heap_leaves_a_callers_own_freeze_frozen(collector: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GC_ENV, raising=False)
    gc.set_threshold(700, 10, 10)
    gc.freeze()  # the calling process froze its heap itself
    with settled_heap():
        pass
    assert gc.get_freeze_count() > 0 and gc.get_threshold() == (700, 10, 10)
