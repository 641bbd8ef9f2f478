"""Running the composition steps (compiler/lowering.py) for the executor: ``map`` and ``optional``.

The executor (runtime/executor.py) hands these steps here with itself; they use its evaluation
(``_value``, ``_gather``) and its runner, so they work the same on every backend. Each item of a
map is one call to the node's deployment, made concurrently (a batched node batches them).
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

from dagserve._errors import AppClosedError, DagserveError, HTTPError, NodeError, RequestTimeoutError
from dagserve.compiler.plan import Step, fill
from dagserve.runtime.failures import blame, http_exception, node_failure, node_timeout_error

__all__ = ["SKIPPED_HEADER", "run_map", "run_optional"]

#: Response header naming the nodes an ``optional`` skipped (comma-separated).
SKIPPED_HEADER = "x-dagserve-skipped"


async def run_map(ex: Any, step: Step, values: list[Any], ctx: Any) -> list[Any]:
    """``step``'s node called on every item of its list, concurrently; the results in order."""
    await ex._gather(list(step.inputs), values, ctx, resolve=True)
    args, kwargs = fill(step.args, values), fill(step.kwargs, values)
    items, fixed = args[0], tuple(args[1:])
    name = step.name
    if not isinstance(items, (list, tuple)):
        raise NodeError(
            f"Map {name!r} applies its node to each item of a list, but got a {type(items).__name__}; "
            "make the node that feeds it return a list.",
            node=name,
            error_type="TypeError",
        )
    if not items:
        return []
    timeout = ex.plan.deployment(step.deployment).options.timeout_s
    ctx.running.add(name)
    start = time.perf_counter()
    tasks = [
        asyncio.ensure_future(_item(ex.runner, step, k, len(items), item, fixed, kwargs, ctx, timeout))
        for k, item in enumerate(items)
    ]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        ctx.running.discard(name)
        ctx.timings[name] = time.perf_counter() - start  # the whole map, every item's call in it


async def _item(
    runner: Any, step: Step, k: int, n: int, item: Any, fixed: tuple[Any, ...], kwargs: dict[str, Any], ctx: Any, timeout: float | None
) -> Any:
    """One item's call, its failure naming the node and the item's index."""
    try:
        pending = runner.call(step, (item, *fixed), dict(kwargs), ctx)
        if timeout is None:
            return await pending
        try:
            return await asyncio.wait_for(pending, timeout)
        except TimeoutError as exc:
            if isinstance(exc, RequestTimeoutError):
                raise
            raise node_timeout_error(step.name, timeout) from None
    except asyncio.CancelledError:
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        raise _at_item(node_failure(step.name, exc), k, n) from exc


def _at_item(err: DagserveError, k: int, n: int) -> DagserveError:
    """``err`` with the item it happened at in its message (its type and fields kept)."""
    where = f" (at item {k} of {n} in the map)"
    if isinstance(err, HTTPError):
        return err  # its message is the node's own detail, sent to the client as it is
    if type(err) is NodeError:
        out: DagserveError = NodeError(str(err) + where, node=err.node, error_type=err.error_type)
    elif type(err) is RequestTimeoutError:
        out = RequestTimeoutError(str(err) + where, node=err.node)
    else:
        return err
    out.__cause__ = err.__cause__
    return out


async def run_optional(ex: Any, step: Step, values: list[Any], ctx: Any) -> Any:
    """The value of ``step``'s node, or its default (``on_error(error)``) when that failed."""
    inner = step.inputs[0]
    try:
        return await ex._value(inner, values, ctx)
    except (asyncio.CancelledError, AppClosedError):
        raise  # the request's deadline, a client gone, an App shut down: the request ends
    except Exception as exc:
        ctx.skipped[ex._steps[inner].name] = exc
        if step.on_error is None:
            # A copy: a reader that changes the default (appends to a [] default) must not change
            # what the next request gets.
            return _fresh(step.default)
        try:
            return step.on_error(exc)
        except Exception as again:
            chosen = again if isinstance(again, HTTPError) else http_exception(step.name, again)
            if chosen is not None:  # on_error chose the answer's status
                raise blame(chosen, step.name) from again
            raise NodeError(
                f"The on_error function of {step.name!r} raised {type(again).__name__}: {again} "
                f"(handling {type(exc).__name__}: {exc}).",
                node=step.name,
                error_type=type(again).__name__,
            ) from again


def _fresh(default: Any) -> Any:
    """A copy of an optional's default (the default itself when it cannot be copied)."""
    if default is None or isinstance(default, (str, int, float, bool, bytes, tuple, frozenset)):
        return default  # immutable (a tuple's items rarely change in place): no copy needed
    try:
        return copy.deepcopy(default)
    except Exception:  # noqa: BLE001 - an object that refuses to be copied is given as it is
        return default
