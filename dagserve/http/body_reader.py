"""Reading a request's body within the ingress's limits, for every door.

The body is read as it streams in, stopped at ``max_body_bytes`` (413) or ``body_timeout_s``
(408); a refused body's rest is read and dropped when that is cheap, so that clients that send the
whole body before reading the answer see it. Nothing past the limit is ever buffered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagserve.http.errors import HTTPError
from dagserve.http.middleware import CLOSE
from dagserve.runtime.deadlines import FixedTimeout

if TYPE_CHECKING:
    from starlette.requests import Request

    from dagserve.http.settings import IngressConfig

__all__ = ["BodyReader"]


class BodyReader:
    """The bodies of one ingress's requests (``config``: its limits)."""

    def __init__(self, config: IngressConfig) -> None:
        self.config = config
        # The body deadline, on one loop timer for all requests (see runtime/deadlines.py).
        self._deadline = FixedTimeout(config.body_timeout_s)

    async def read(self, request: Request, declared: str | None, expect: str | None) -> bytes:
        """The body, read as it streams in, stopped at the size limit or the deadline.

        ``declared`` is the Content-Length header, ``expect`` the Expect header, if any. A body
        over the limit gets 413 once its rest is read and dropped (see :meth:`discard`).
        """
        limit = self.config.max_body_bytes
        if declared is not None:
            if not declared.isdigit():
                raise HTTPError(400, f"The Content-Length header {declared!r} is not a number.", headers=CLOSE)
            if int(declared) > limit:
                drained = await self.discard(request, declared, expect)
                raise HTTPError(413, _too_large(int(declared), limit), headers=None if drained else CLOSE)
        chunks: list[bytes] = []
        size = 0
        try:
            async with self._deadline():
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        break
                    if chunk:
                        chunks.append(chunk)
        except TimeoutError:
            raise HTTPError(
                408,
                error_type="RequestBodyTimeout",
                message=f"The request body did not arrive within {self.config.body_timeout_s:g} s "
                f"({size} bytes came); send it faster or raise body_timeout_s.",
                headers=CLOSE,
            ) from None
        if size > limit:  # a body without Content-Length (chunked) that grew past the limit
            drained = await self.discard(request, None, None, read=size)
            raise HTTPError(413, _too_large(None, limit), headers=None if drained else CLOSE)
        return b"".join(chunks)

    async def discard(self, request: Request, declared: str | None, expect: str | None, read: int = 0) -> bool:
        """Read and drop the rest of a body the ingress refused; ``True`` once it is all read.

        Clients such as urllib and requests send the whole body before they read the answer: a
        connection closed with their body unread resets, and they never see the answer. So the
        rest is read (``read`` bytes came already), up to twice ``max_body_bytes`` in all and
        within ``body_timeout_s``; beyond either, or when the client waits for
        ``100 Continue`` before sending, ``False``: answer with ``Connection: close``.
        """
        if read == 0 and expect is not None and expect.strip().lower() == "100-continue":
            return False  # nothing sent yet; reading would ask for the body with 100 Continue
        cap = 2 * self.config.max_body_bytes
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            return False
        try:
            async with self._deadline():
                while True:
                    message = await request.receive()
                    if message["type"] != "http.request":
                        return False  # the client went away
                    read += len(message.get("body", b""))
                    if read > cap:
                        return False
                    if not message.get("more_body", False):
                        return True
        except TimeoutError:
            return False


def _too_large(declared: int | None, limit: int) -> str:
    size = f"is {declared} bytes" if declared is not None else "is larger than that"
    return f"The request body {size}; the limit is {limit} bytes (max_body_bytes). Send less, or raise the limit."
