"""Stopping a local Ray that a test module (or tests/conftest.py) started, at once.

``serve.shutdown()`` first deletes every application and waits for each replica's graceful stop
(seconds per module), and then ``ray.shutdown()`` ends those processes anyway. Like
``dagserve.backends.ray.cluster.release`` for a Ray dagserve started, this forgets Serve's client
and stops Ray, which takes Serve down with it.
"""

from __future__ import annotations

__all__ = ["stop_local_ray"]


def stop_local_ray() -> None:
    import ray
    from ray.serve import context as serve_context

    serve_context._disconnect()  # the next Ray gets a Serve of its own, not this one's cached client
    ray.shutdown()
