"""Garbage-collector settings for a long-running serving process (the ingress, each Ray replica).

A process that has imported Ray and Serve holds ~170,000 objects the cyclic garbage collector
tracks, nearly all alive for good (modules, classes, functions). CPython's collector scans all of
them at every full (generation 2) collection: measured in the ingress of the ``cluster`` benchmark
under load, 6-7 full collections in 8 s took ~140 ms each (600-1,000 ms in all, the p99 latency
spikes), and the young collections another ~400 ms, about a quarter of the ingress's CPU time.

:func:`settle_heap`, called once the process has started (models loaded, graph deployed):

* ``gc.freeze()``: what the collector tracks now moves to the permanent generation, which no
  collection scans again (as CPython's documentation of ``gc.freeze`` suggests for long-lived
  processes). It costs nothing (a list splice; no collection first, which would cost ~0.1 s per
  replica start: the few start-up cycles already garbage stay, a fixed amount);
* ``gc.set_threshold(YOUNG_THRESHOLD, ...)``: a young collection after 10,000 net new container
  objects instead of 700, so request bursts (each request allocates and frees its objects) do not
  trigger one every few requests; cyclic garbage is still collected, in bigger, rarer steps.

Replicas settle for good; ``dagserve.serve`` only while it serves (:func:`settled_heap`), so a
process that goes on afterwards gets its collector back. Reference cycles in what the process
creates later are collected as before. Set
``DAGSERVE_GC_TUNING=0`` to leave the collector as Python configures it. Standard library only.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator

__all__ = ["GC_ENV", "YOUNG_THRESHOLD", "settle_heap", "settled_heap"]

#: Environment variable: "0" leaves the garbage collector alone.
GC_ENV = "DAGSERVE_GC_TUNING"
#: Net new container objects between two young collections (CPython's default is 700).
YOUNG_THRESHOLD = 10_000


def settle_heap() -> bool:
    """Freeze what is alive now out of the collector's scans and space young collections out
    (see the module docstring); ``False`` (nothing done) when ``DAGSERVE_GC_TUNING=0``."""
    if os.environ.get(GC_ENV, "1") == "0":
        return False
    gc.freeze()
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, young), older, oldest)
    return True


@contextlib.contextmanager
def settled_heap() -> Iterator[None]:
    """:func:`settle_heap` for a block (``dagserve.serve`` while it serves): afterwards the
    collector is as it was, so a process that goes on after serving (a test, a script) is not
    left with a frozen heap and other thresholds."""
    thresholds = gc.get_threshold()
    frozen_before = gc.get_freeze_count()  # the caller's own freeze, if any, is left as it was
    settled = settle_heap()
    try:
        yield
    finally:
        if settled:
            if not frozen_before:
                gc.unfreeze()
            gc.set_threshold(*thresholds)
