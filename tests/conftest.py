"""Shared fixtures. Ray-backed fixtures live in the integration test modules.

A module either starts a Ray of its own (when it needs special settings: a cluster, a logical GPU,
environment variables its replicas must inherit, no Ray running before it) or uses ``shared_ray``:
one plain local Ray (``start_local_ray(num_cpus=2)``: loopback, token auth, no dashboard) that the
modules using it share. Collection runs those modules one after another, so that Ray and its Serve
start once, not once per module; each module still finds Serve without applications (what it
deployed is deleted after it), and any other module finds no Ray running (it is stopped first).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

#: The fixture a module asks for to run on the shared Ray.
SHARED_RAY = "shared_ray"
#: Node ids of the modules that use it (found at collection).
_sharing_modules: set[str] = set()
#: Whether the shared Ray runs (started by ``shared_ray``, stopped by ``_stop_shared_ray``).
_shared_ray_up = False


def _module_of(item: pytest.Item) -> str:
    module = item.getparent(pytest.Module)
    return module.nodeid if module is not None else item.nodeid


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the modules that use ``shared_ray`` one after another, where the first of them was;
    every other item keeps its place, and each module its own order."""
    _sharing_modules.clear()
    _sharing_modules.update(_module_of(item) for item in items if SHARED_RAY in getattr(item, "fixturenames", ()))
    if len(_sharing_modules) < 2:
        return
    sharing = [item for item in items if _module_of(item) in _sharing_modules]
    ordered: list[pytest.Item] = []
    for item in items:
        if _module_of(item) not in _sharing_modules:
            ordered.append(item)
        elif item is sharing[0]:
            ordered.extend(sharing)
    items[:] = ordered


def _stop_shared_ray() -> None:
    global _shared_ray_up
    if not _shared_ray_up:
        return
    _shared_ray_up = False
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def _delete_serve_applications() -> None:
    """Delete every Serve application (each waits for its replicas to stop)."""
    from ray import serve
    from ray.serve.context import _get_global_client

    if _get_global_client(raise_if_no_controller_running=False) is None:
        return
    for name in list(serve.status().applications):
        serve.delete(name)


@pytest.fixture(scope="module")
def shared_ray() -> Iterator[None]:
    """The local Ray the modules using this fixture share (started by the first of them)."""
    global _shared_ray_up
    import ray

    from dagserve.backends.ray.cluster import start_local_ray

    if _shared_ray_up and not ray.is_initialized():
        _shared_ray_up = False  # a test stopped it: start another
    if not _shared_ray_up:
        assert not ray.is_initialized(), "a Ray started elsewhere is still running"
        start_local_ray(num_cpus=2)
        _shared_ray_up = True
    yield
    if ray.is_initialized():
        _delete_serve_applications()  # the next module starts from an empty Serve


@pytest.fixture(autouse=True, scope="module")
def _own_ray_only(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module that does not use the shared Ray finds none running (it may start its own)."""
    if request.node.nodeid not in _sharing_modules:
        _stop_shared_ray()
    yield


@pytest.fixture(autouse=True, scope="session")
def _shared_ray_stopped_at_the_end() -> Iterator[None]:
    yield
    _stop_shared_ray()


@pytest.fixture(autouse=True, scope="session")
def _private_runtime_dir() -> Iterator[None]:
    """Admin token files and jobs databases of every server the suite starts (``dagserve run`` on
    loopback makes them) go to a directory of this session, never to the user's own directories."""
    with tempfile.TemporaryDirectory(prefix="dagserve-tests-") as runtime:
        os.chmod(runtime, 0o700)
        # The jobs files of loopback servers (``dagserve run`` keeps one per host:port) go here too.
        old = {name: os.environ.get(name) for name in ("XDG_RUNTIME_DIR", "XDG_STATE_HOME")}
        os.environ["XDG_RUNTIME_DIR"] = runtime
        os.environ["XDG_STATE_HOME"] = os.path.join(runtime, "state")
        yield
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
