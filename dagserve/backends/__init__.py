"""Backends execute a :class:`~dagserve.Plan`. ``local`` runs in-process; ``ray`` on Ray Serve.

The Ray backend is imported only when asked for, so ``import dagserve`` never imports ray.
"""

from __future__ import annotations

from dagserve.backends.base import Backend, get_backend

__all__ = ["Backend", "get_backend"]
