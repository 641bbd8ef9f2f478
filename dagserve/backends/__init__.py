"""Backends execute a :class:`~dagserve.Plan`. ``local`` runs in-process; ``ray`` on Ray Serve.

The Ray backend is imported only when asked for, so ``import dagserve`` never imports ray.
"""

from __future__ import annotations

from typing import Any

from dagserve._errors import DagserveError
from dagserve.backends.base import Backend

__all__ = ["Backend", "get_backend"]


def get_backend(name: str | Backend, **kwargs: Any) -> Backend:
    """A backend by name (``"local"`` or ``"ray"``), or the instance given."""
    if isinstance(name, Backend):
        if kwargs:
            raise DagserveError("Backend options go to the backend's constructor when passing an instance.")
        return name
    if name == "local":
        from dagserve.backends.local import LocalBackend

        return LocalBackend(**kwargs)
    if name == "ray":
        from dagserve.backends.ray.backend import RayBackend  # imports ray, on demand

        return RayBackend(**kwargs)
    raise DagserveError(f"Unknown backend {name!r}; use 'local' (in-process) or 'ray' (Ray Serve).")
