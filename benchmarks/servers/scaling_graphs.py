"""The graphs of the ``scaling`` benchmark (benchmarks/scaling.py), as ``dagserve run`` loads them.

``fanout_N``: N function nodes each adding its index to ``x``, summed by a ``combine`` node
(N + 1 deployments on Ray). ``map_N``: one ``items`` node making ``range(n)`` and ``dagserve.map``
of a ``double`` node over it (2 deployments, N calls per request). The hand-written Serve versions
are in ``scaling_serve.py``; both answer the bodies and values of ``expected``.
"""

from __future__ import annotations

from typing import Any

import dagserve

FANOUT_SIZES = (1, 5, 20)
MAP_SIZES = (10, 100, 1000)


@dagserve.node
def branch(x: int, i: int) -> int:
    return x + i


@dagserve.node
def combine(values: list[int]) -> int:
    return sum(values)


@dagserve.node
def items(n: int) -> list[int]:
    return list(range(n))


@dagserve.node
def double(i: int) -> int:
    return 2 * i


def fanout(n: int) -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = combine([branch.options(name=f"branch{i}")(inp["x"], i) for i in range(n)])
    return dagserve.Graph(out, name=f"fanout{n}")


def mapped(n: int) -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = dagserve.map(double, items(inp["n"]))
    return dagserve.Graph(out, name=f"map{n}")


def body(shape: str, size: int) -> dict[str, Any]:
    return {"x": 1} if shape == "fanout" else {"n": size}


def expected(shape: str, size: int) -> Any:
    return size + size * (size - 1) // 2 if shape == "fanout" else [2 * i for i in range(size)]


fanout_1, fanout_5, fanout_20 = (fanout(n) for n in FANOUT_SIZES)
map_10, map_100, map_1000 = (mapped(n) for n in MAP_SIZES)
