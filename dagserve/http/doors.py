"""A door: how one family of graph routes reads a request and writes its answer.

The ingress runs every graph request the same way (token, admission, body limits and deadline,
hang-up cancellation, errors); a :class:`Door` supplies only what differs between protocols: the
check of the body's type, turning the body into the graph's payload, turning the graph's output
into the answer's bytes, and the shape of error answers. The JSON routes are one door
(:data:`JSON_DOOR`), the Open Inference Protocol's infer routes another (``http/oip_rest.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagserve.http.errors import HTTPError
from dagserve.http.jsonio import dump_json, parse_json

if TYPE_CHECKING:
    from starlette.types import Scope

__all__ = ["JSON", "JSON_DOOR", "Door", "check_json_type"]

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


def check_json_type(scope: Scope, value: str | None) -> None:
    """415 unless the body is typed JSON (UTF-8)."""
    if value is None:
        # A web page may send a body without a type to any server without asking first (a no-cors
        # fetch); one typed application/json needs the server's consent (CORS), which we never give.
        raise HTTPError(
            415,
            "The request has no Content-Type; send the body as application/json "
            "(curl: -H 'content-type: application/json').",
        )
    media, _, params = value.partition(";")
    media = media.strip().lower()
    if media != JSON and not (media.startswith("application/") and media.endswith("+json")):
        raise HTTPError(415, f"The content type is {media!r}; send the body as application/json.")
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise HTTPError(415, f"The body's charset is {val.strip()!r}; send JSON encoded as UTF-8.")


def _decode_json(body: bytes, scope: Scope, max_depth: int) -> tuple[Any, None]:
    return parse_json(body, max_depth=max_depth), None


def _encode_json(result: Any, state: None) -> tuple[bytes, str, None]:
    return dump_json(result), JSON, None


#: dagserve's own JSON graph routes.
JSON_DOOR = Door(protocol="http", shape="dagserve", check=check_json_type, decode=_decode_json, encode=_encode_json, streams=True)
