"""Small graphs for the HTTP ingress tests (importable by subprocesses as ``tests.ingress_graphs:...``)."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

import dagserve

RAN: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()
log = logging.getLogger("tests.ingress")


class Item(BaseModel):
    x: int
    tag: str = "a"


class StrictItem(BaseModel):
    """Validates exactly what its JSON Schema says (no "1" -> 1 or false -> 0 coercion)."""

    model_config = ConfigDict(strict=True)

    x: int
    scale: float = 1.0
    tags: list[str] = []


class Point(BaseModel):
    x: float
    y: float


@dagserve.node
def double(x: int) -> int:
    with _lock:
        RAN["double"] += 1
    return 2 * x


@dagserve.node
async def echo(payload: Any) -> Any:
    return payload


@dagserve.node
async def whoami(x: int) -> dict[str, Any]:
    log.info("whoami got %s", x)
    return {"request_id": dagserve.current_request_id(), "x": x}


@dagserve.node
def boom(x: int) -> int:
    raise ValueError(f"boom at {x}")


@dagserve.node
async def sleepy(x: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return x


@dagserve.node
def arrays(n: int) -> dict[str, Any]:
    return {
        "a": np.arange(n),
        "mean": np.float32(1.5),
        "point": Point(x=1, y=2),
        "pair": (1, 2),
        "set": {7},
        "nan": float("nan"),
    }


@dagserve.node
def opaque(x: Any) -> Any:
    return threading.Lock()


@dagserve.node(max_ongoing_requests=1, max_queued_requests=1)
async def narrow(x: int) -> int:
    await asyncio.sleep(0.5)
    return x


def typed() -> dagserve.Graph:
    with dagserve.Input(schema=Item) as inp:
        out = {"y": double(inp["x"]), "tag": inp["tag"]}
    return dagserve.Graph(out, name="typed", description="Doubles x.")


def strict() -> dagserve.Graph:
    with dagserve.Input(schema=StrictItem) as inp:
        out = {"y": double(inp["x"]), "scale": inp["scale"], "tags": inp["tags"]}
    return dagserve.Graph(out, name="strict")


class Greeting(BaseModel):
    """A request routed on ``lang`` by a switch without a default: only its cases are served."""

    model_config = ConfigDict(strict=True)

    name: str
    lang: str
    style: int = 0


@dagserve.node
def hello(name: str) -> str:
    return f"hello {name}"


@dagserve.node
def bonjour(name: str) -> str:
    return f"bonjour {name}"


def routed() -> dagserve.Graph:
    """Two switches without a default on input fields (``style`` has a default value, one of its
    cases), and inside a branch a switch with a default (it accepts any value)."""
    with dagserve.Input(schema=Greeting) as inp:
        polite = dagserve.switch(inp["name"], {"x": hello(inp["name"])}, default=bonjour(inp["name"]))
        greeting = dagserve.switch(inp["lang"], {"en": polite, "fr": bonjour(inp["name"])})
        tone = dagserve.switch(inp["style"], {0: hello(inp["name"]), 1: bonjour(inp["name"])})
    return dagserve.Graph({"greeting": greeting, "tone": tone}, name="routed")


def echoing() -> dagserve.Graph:
    return dagserve.Graph(echo, name="echo")


def identified() -> dagserve.Graph:
    with dagserve.Input(schema=Item) as inp:
        out = whoami(inp["x"])
    return dagserve.Graph(out, name="whoami")


def failing() -> dagserve.Graph:
    return dagserve.Graph(boom, name="failing")


def slow() -> dagserve.Graph:
    with dagserve.Input() as inp:
        out = sleepy(inp["x"], inp["seconds"])
    return dagserve.Graph(out, name="slow")


def numeric() -> dagserve.Graph:
    return dagserve.Graph(arrays, name="arrays")


def unwritable() -> dagserve.Graph:
    return dagserve.Graph(opaque, name="opaque")


def overloaded() -> dagserve.Graph:
    return dagserve.Graph(narrow, name="narrow")


#: For ``dagserve run tests.ingress_graphs:SLOW`` in subprocess tests.
SLOW = slow()
FAILING = failing()
#: Two graphs in one server.
BOTH = [typed(), echoing()]
#: Two graphs with one name (and so one route): refused before either deploys.
SAME_NAME = [typed(), echoing(), typed()]
NOT_A_GRAPH = 42
