"""An asyncio batcher: concurrent single calls in, one list call out.

Both backends use it (the local one in-process, the Ray one inside each Serve replica): calls are
grouped up to ``max_batch_size`` or until ``wait_s`` has passed since the first one waiting, one
batch runs at a time per replica, and the next batch forms only when the previous one has finished,
so whatever queued meanwhile goes together (Serve's own ``serve.batch`` closes a batch every
``wait_s`` even while the model is busy, which keeps batches small under load). The user function
takes a list and returns a list of the same length.

A multiplexed node's calls carry their model id (``submit(item, model_id)``): a batch holds calls of
one id only (that of the oldest call waiting), and runs with that id current
(:func:`dagserve.model_id`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from dagserve._errors import NodeError
from dagserve.runtime.multiplex import reset_model_id, set_model_id

__all__ = ["Batcher", "check_batch_result"]


def check_batch_result(node: str, result: Any, expected: int) -> list[Any]:
    """The batch's results as a list, or a :class:`NodeError` naming the node when the length is off."""
    if not isinstance(result, (list, tuple)):
        raise NodeError(
            f"Batched node {node!r} must return a list with one result per input, got "
            f"{type(result).__name__}.",
            node=node,
            error_type="BatchResultError",
        )
    if len(result) != expected:
        raise NodeError(
            f"Batched node {node!r} returned {len(result)} results for a batch of {expected} inputs; "
            "return exactly one result per input, in order.",
            node=node,
            error_type="BatchResultError",
        )
    return list(result)


class Batcher:
    """Groups ``submit(item)`` calls into ``run(list)`` calls."""

    def __init__(
        self,
        node: str,
        run: Callable[[list[Any]], Awaitable[Any]],
        max_batch_size: int,
        wait_s: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.node = node
        self._run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self._on_batch = on_batch
        self._queue: list[tuple[Any, asyncio.Future[Any], str | None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False
        self.batch_sizes: list[int] = []  # recent sizes, for tests and metrics

    async def submit(self, item: Any, model_id: str | None = None) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((item, fut, model_id))
        if not self._busy:
            if len(self._queue) >= self.max_batch_size:
                self._start(loop)
            elif self._timer is None:
                self._timer = loop.call_later(self.wait_s, self._start, loop)
        return await fut

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy or not self._queue:
            return
        model_id = self._queue[0][2]
        if model_id is None and all(m is None for _, _, m in self._queue[: self.max_batch_size]):
            taken = self._queue[: self.max_batch_size]
            del self._queue[: self.max_batch_size]
        else:  # one model id per batch: the oldest call's; the others keep their places
            taken, rest = [], []
            for entry in self._queue:
                (taken if entry[2] == model_id and len(taken) < self.max_batch_size else rest).append(entry)
            self._queue = rest
        batch = [(i, f) for i, f, _ in taken if not f.cancelled()]
        if not batch:
            self._schedule_next(loop)
            return
        self._busy = True
        loop.create_task(self._execute(batch, loop, model_id))

    async def _execute(
        self, batch: list[tuple[Any, asyncio.Future[Any]]], loop: asyncio.AbstractEventLoop, model_id: str | None = None
    ) -> None:
        token = set_model_id(model_id) if model_id is not None else None  # this task's own context
        try:
            size = len(batch)
            self.batch_sizes.append(size)
            if len(self.batch_sizes) > 1000:
                del self.batch_sizes[:500]
            if self._on_batch is not None:
                self._on_batch(size)
            try:
                results = check_batch_result(self.node, await self._run([i for i, _ in batch]), size)
            except BaseException as exc:  # every caller in the batch sees the failure
                if isinstance(exc, asyncio.CancelledError):
                    for _, f in batch:
                        f.cancel()
                    raise
                # SystemExit/KeyboardInterrupt from node code fail the batch's requests, not the loop.
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                return
            for (_, f), r in zip(batch, results, strict=True):
                if not f.done():
                    f.set_result(r)
        finally:
            if token is not None:
                reset_model_id(token)
            self._busy = False
            self._schedule_next(loop)

    def _schedule_next(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._queue:
            return
        if len(self._queue) >= self.max_batch_size:
            self._start(loop)
        elif self._timer is None:
            # Whatever queued while the last batch ran has already waited; do not wait again.
            self._timer = loop.call_later(0, self._start, loop)
