"""What every call to a Ray replica carries first, whichever transport takes it (Serve's
handles or the direct transport): a typed value, read by name on both sides.

A :class:`CallHeader` is a ``NamedTuple``, so it pickles small and fast (a tuple and the class's
name) and replicas read ``header.step`` instead of an index. The ingress's runner builds it for
node calls and streams (``backends/ray/runner.py``), a replica's handles for the calls its node
code makes (``backends/ray/replica_caller.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["CallExtras", "CallHeader"]

#: What a call to or with handles adds: ``{"handles": bool, "deadline_s": float | None}``
#: (``handles``: the arguments hold handle refs; ``deadline_s``: what is left of the request).
CallExtras = dict[str, Any]


class CallHeader(NamedTuple):
    """The method to run, the step (node) it is for, the request's id, its W3C ``traceparent``
    (``None``: not traced), and the extras of a call to or with handles (``None``: none)."""

    method: str
    step: str
    request_id: str
    traceparent: str | None = None
    extras: CallExtras | None = None

    @property
    def with_handles(self) -> bool:
        """Do the call's arguments hold handle refs (so sync node code runs on a thread)?"""
        extras = self.extras
        return bool(extras and extras.get("handles"))
