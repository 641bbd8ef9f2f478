"""A door: how one family of graph routes reads a request and writes its answer.

The ingress runs every graph request the same way (token, admission, body limits and deadline,
hang-up cancellation, errors); a :class:`Door` supplies only what differs between protocols: the
check of the body's type, turning the body into the graph's payload, turning the graph's output
into the answer's bytes, and the shape of error answers. dagserve's own graph routes are one door
(``http/bodies.py`` ``graph_door``: JSON, and files), the Open Inference Protocol's infer routes
another (``http/oip_rest.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from starlette.types import Scope

__all__ = ["JSON", "Door"]

JSON = "application/json"


@dataclass(frozen=True)
class Door:
    """What one protocol's graph route does differently (see the module's docstring).

    ``check(scope, content_type)`` refuses a body's type (before admission: nothing is read);
    ``decode(body, scope, max_depth)`` gives ``(payload, state)`` (run on a worker thread for a
    large body); ``encode(result, state)`` gives ``(content, media_type, headers)``.
    ``streams``: a streaming graph answers with its stream (SSE/NDJSON by Accept).
    """

    protocol: str
    shape: str
    check: Callable[[Scope, str | None], None]
    decode: Callable[[bytes, Scope, int], tuple[Any, Any]]
    encode: Callable[[Any, Any], tuple[bytes, str, dict[str, str] | None]]
    streams: bool = False
