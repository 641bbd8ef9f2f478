"""A small importable graph for ``dagserve build`` + ``serve deploy`` on a real cluster
(tests/http/test_serve_deploy.py): a function node and a model node."""

from __future__ import annotations

import dagserve


@dagserve.node
def double(x: int) -> int:
    return 2 * x


@dagserve.node(num_replicas=1)
class Add:
    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, x: int) -> dict[str, int]:
        return {"y": x + self.n}


with dagserve.Input() as inp:
    GRAPH = dagserve.Graph(Add(1)(double(inp["x"])), name="tiny")
