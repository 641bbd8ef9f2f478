"""Getting a Ray to deploy on: a private loopback-only instance started on demand, or a cluster.

One process talks to one Ray. :func:`acquire` reuses the Ray this process is already connected
to, or starts a new local instance (``address="local"``: never join a cluster recorded by an
earlier run), or connects to ``address`` (``"auto"``, ``"ray://host:port"`` or a GCS
``host:port``). Every deployed App holds a lease; when the last one is released, a Ray that
dagserve started is stopped, a cluster dagserve connected to is disconnected from (never
stopped), and a Ray the user started is left alone.

A Ray that dagserve starts:

* binds every port to 127.0.0.1 (Ray's own switch for that is read from
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; replicas also move Serve's inter-deployment gRPC
  server off ``[::]``, see :mod:`._ray_replica`), with the dashboard off;
* uses Ray's token authentication (``RAY_AUTH_MODE=token``), checked once Ray runs: an
  environment that turns it off (``RAY_AUTH_MODE=disabled``) is refused unless the user opted out
  (``allow_unauthenticated_ray=True`` or ``DAGSERVE_ALLOW_UNAUTHENTICATED_RAY=1``); the token file
  Ray reads (``~/.ray/auth_token``) is readable by its owner only (Ray would create it 0644);
* runs Serve in throughput-optimized mode unless told not to (see docs/ray.md for figures), with
  Serve's "direct ingress" HTTP servers off: the ingress is dagserve's own.

Serve reads those settings from the environment of each process, once: the processes of a Ray
started here inherit them. Any other Ray (a cluster dagserve joins, one the user started) was
started by someone else, so :func:`replica_runtime_env` carries this process's settings in the
runtime environment of every deployment dagserve creates there (replicas and ingress replicas),
under the job's own ``env_vars``, which win; :func:`settings_report` says what is in force.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagserve._errors import DeployError
from dagserve.backends.ray.replica import LOOPBACK_ENV

_log = logging.getLogger("dagserve.ray")

__all__ = [
    "ALLOW_UNAUTHENTICATED_ENV",
    "DEFAULT_THROUGHPUT_OPTIMIZED",
    "SERVE_SETTINGS",
    "RaySession",
    "acquire",
    "ensure_serve",
    "merged_runtime_env",
    "release",
    "serve_env",
    "replica_runtime_env",
    "settings_report",
    "start_local_ray",
]

#: Serve's throughput-optimized settings for a Ray dagserve starts (docs/ray.md has the figures).
DEFAULT_THROUGHPUT_OPTIMIZED = True
#: Set to "1" to let dagserve start a Ray without token authentication (docs/ray.md).
ALLOW_UNAUTHENTICATED_ENV = "DAGSERVE_ALLOW_UNAUTHENTICATED_RAY"
#: Ray's environment variables for its authentication mode and where its token is.
_AUTH_MODE_ENV, _TOKEN_ENV, _TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"

#: Serve's settings (environment variables) dagserve carries to the deployments it creates: the
#: ones it sets (:func:`_set_serve_env`), and those throughput mode switches, when set here.
SERVE_SETTINGS = (
    "RAY_SERVE_THROUGHPUT_OPTIMIZED",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS",
    "RAY_SERVE_ROUTER_RETRY_INITIAL_BACKOFF_S",
    "RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE",
    "RAY_SERVE_LOG_TO_STDERR",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP",
)

_lock = threading.RLock()
#: The GCS address of the Ray :func:`start_local_ray` started last, and the Serve settings its
#: processes inherited from this one.
_started_here: tuple[str | None, dict[str, str]] | None = None


@dataclass
class RaySession:
    """This process's use of Ray: who started it, with what, and how many Apps use it."""

    owned: bool  # dagserve started this Ray instance and stops it after the last App
    connected: bool  # dagserve called ray.init (started or joined); it disconnects after the last App
    address: str | None
    start_options: dict[str, Any] = field(default_factory=dict)
    users: int = 0


_session: RaySession | None = None


def acquire(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    throughput_optimized: bool | None = None,
    log_to_driver: bool = False,
    allow_unauthenticated: bool = False,
) -> RaySession:
    """A lease on a Ray for one App; pair with :func:`release`."""
    import ray

    global _session
    start = {"num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources or None}
    asked = {k: v for k, v in start.items() if v is not None}
    with _lock:
        if _session is not None and not ray.is_initialized():
            _session = None  # someone called ray.shutdown() behind our back
        if ray.is_initialized():
            session = _session or RaySession(owned=False, connected=False, address=_current_address())
            _check_same_cluster(session, address)
            if asked and (not session.owned or {k: session.start_options.get(k) for k in asked} != asked):
                raise DeployError(
                    f"Ray is already running in this process, so {_kv(asked)} cannot be applied: those "
                    "options only take effect when dagserve starts Ray. Drop them, or shut down the "
                    "running Ray (and every App on it) first."
                )
        elif address in (None, "local"):
            start_local_ray(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                resources=resources,
                throughput_optimized=throughput_optimized,
                log_to_driver=log_to_driver,
                allow_unauthenticated=allow_unauthenticated,
            )
            session = RaySession(owned=True, connected=True, address="local", start_options=start)
        else:
            if asked:
                raise DeployError(
                    f"{_kv(asked)} only apply when dagserve starts a local Ray; a cluster at "
                    f"{address!r} has the resources its nodes were started with."
                )
            # The replicas get these too, in their runtime_env (replica_runtime_env).
            _set_serve_env(DEFAULT_THROUGHPUT_OPTIMIZED if throughput_optimized is None else throughput_optimized)
            # A cluster on this machine's loopback: stop Ray from rewriting 127.0.0.1 to the
            # machine's address (where such a cluster does not listen).
            keep = _loopback_only(mark_processes=False) if _is_loopback(address) else contextlib.nullcontext()
            try:
                with keep:
                    ray.init(address=address, log_to_driver=log_to_driver, logging_level=logging.WARNING)
            except Exception as exc:
                raise DeployError(
                    f"Could not connect to the Ray cluster at {address!r}: {type(exc).__name__}: {exc}. "
                    "Check that it runs (`ray status`) and that the address is right."
                ) from exc
            session = RaySession(owned=False, connected=True, address=address)
        session.users += 1
        _session = session
        return session


def release(session: RaySession) -> None:
    """Give back one App's lease; the last one stops or disconnects what dagserve started."""
    import ray

    global _session
    with _lock:
        session.users = max(0, session.users - 1)
        if session.users or _session is not session:
            return
        _session = None
        if not session.connected or not ray.is_initialized():
            return
        # Stopping a Ray that dagserve started takes Serve down with it, at once (serve.shutdown()
        # would first drain every replica); leaving a cluster leaves its Serve running. Either
        # way, forget the client Serve cached for this connection.
        from ray.serve import context as serve_context

        with contextlib.suppress(Exception):
            serve_context._disconnect()
        ray.shutdown()


def start_local_ray(
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    throughput_optimized: bool | None = None,
    log_to_driver: bool = False,
    allow_unauthenticated: bool = False,
) -> None:
    """Start a new local Ray on 127.0.0.1 with the dashboard off and token auth on.

    Tests use it to share one such Ray per module; ``RayBackend`` calls it when no Ray runs.
    Without token authentication (the environment turned it off) it refuses with a
    :class:`DeployError`, unless ``allow_unauthenticated`` or ``$DAGSERVE_ALLOW_UNAUTHENTICATED_RAY``.
    """
    import ray

    allowed = allow_unauthenticated or os.environ.get(ALLOW_UNAUTHENTICATED_ENV, "").lower() in ("1", "true", "yes")
    if not allowed and os.environ.get(_AUTH_MODE_ENV, "token").lower() != "token":
        raise _unauthenticated()  # known before starting: start nothing
    _private_token_file()
    _set_serve_env(DEFAULT_THROUGHPUT_OPTIMIZED if throughput_optimized is None else throughput_optimized)
    # Ray 2.60 turns token authentication on for a new local instance unless RAY_AUTH_MODE says
    # otherwise (it must do so itself: it also refreshes its cached config); it logs a warning
    # about it that is noise here, since dagserve wants exactly that.
    for attempt in (1, 2):
        try:
            with _loopback_only(), _quiet("ray._private.authentication.authentication_token_setup"):
                ray.init(
                    address="local",
                    include_dashboard=False,
                    num_cpus=num_cpus,
                    num_gpus=num_gpus,
                    resources=resources or None,
                    log_to_driver=log_to_driver,
                    logging_level=logging.WARNING,
                )
            break
        except Exception as exc:
            # Two start-up failures seen in full suite runs on the 2-core CI machine, each once:
            # Ray's GCS never wrote its port file, or its raylet never registered (no raylet log
            # at all in either session). A second, fresh start works; anything else, or a second
            # failure, is raised as it is.
            if attempt == 2 or not any(sign in str(exc) for sign in _START_FLAKES):
                raise
            _log.warning("The local Ray did not start (%s); starting it once more.", exc)
            with contextlib.suppress(Exception):
                ray.shutdown()
    global _started_here
    if ray.is_initialized():  # (get_runtime_context() would connect to some Ray otherwise)
        _started_here = (_current_address(), _serve_settings())
    # What Ray runs with, whatever decided it (the environment, a Ray that changed its default).
    if token_auth_enabled():
        return
    if not allowed:
        ray.shutdown()
        raise _unauthenticated()
    _log.warning(
        "The local Ray runs WITHOUT token authentication, as allowed (allow_unauthenticated_ray / %s): "
        "any process on this machine can run code in it.",
        ALLOW_UNAUTHENTICATED_ENV,
    )


def _unauthenticated() -> DeployError:
    mode = os.environ.get(_AUTH_MODE_ENV)
    why = f"{_AUTH_MODE_ENV}={mode!r} is set" if mode is not None else "Ray did not turn it on"
    return DeployError(
        f"dagserve starts Ray only with token authentication, and {why}: without it any process on "
        f"this machine could run code in the Ray. Unset {_AUTH_MODE_ENV} (or set it to 'token'), or "
        f"opt out explicitly with allow_unauthenticated_ray=True, {ALLOW_UNAUTHENTICATED_ENV}=1 or "
        "`dagserve run --allow-unauthenticated-ray`."
    )


def _private_token_file() -> None:
    """Make the token file Ray will read readable by its owner only (before Ray starts).

    Ray 2.60 writes a missing ``~/.ray/auth_token`` with the process umask (0644 usually): any
    local user could then read the token. Create it first, 0600, with a token made the way Ray
    makes one; tighten one that exists (an earlier Ray made it). A file named by
    ``RAY_AUTH_TOKEN_PATH`` is the user's: only a warning when others can read it.
    """
    if os.environ.get(_AUTH_MODE_ENV, "token").lower() != "token" or os.environ.get(_TOKEN_ENV):
        return  # no token at all, or one in the environment, not in a file
    custom = os.environ.get(_TOKEN_PATH_ENV)
    path = Path(custom) if custom else Path.home() / ".ray" / "auth_token"
    try:
        if not path.exists():
            if custom:
                return  # Ray says itself that the file it was pointed at is missing
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it meanwhile: tightened below
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))  # as Ray makes one: 256 random bits
                return
        if path.stat().st_mode & 0o077:
            if custom:
                _log.warning("Ray's token file %s can be read by other users; chmod 600 it.", path)
            else:
                path.chmod(0o600)
    except OSError as exc:
        _log.warning("Could not make Ray's token file %s private (%s); Ray will use it as it is.", path, exc)


#: What Ray's start-up errors say when the processes it spawned never came up (see above).
_START_FLAKES = ("gcs_server_port", "node timed out during startup")


def ensure_serve(*, proxy_port: int | None = None) -> None:
    """Start Serve when it is not running: with its HTTP proxy off, or on 127.0.0.1:``proxy_port``
    of every node that runs a replica (Serve's ``EveryNode``: each node's ingress replicas take
    HTTP there; a worker node's proxy binds ``$RAY_SERVE_WORKER_PROXY_HTTP_PORT`` if its Ray set it).

    A Serve that already runs is used as it is; :func:`proxy_address` says whether it has a proxy.
    """
    from ray import serve
    from ray.serve.context import _get_global_client

    if _get_global_client(raise_if_no_controller_running=False) is None:
        if proxy_port is None:
            serve.start(proxy_location="Disabled")
        else:
            serve.start(proxy_location="EveryNode", http_options={"host": "127.0.0.1", "port": proxy_port})
    # Serve sets its logger to INFO when it starts, then logs each application deploy and handle
    # in this process: noise in a dagserve process (its warnings and errors still show).
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def proxy_address() -> tuple[str, int] | None:
    """Host and port of Serve's HTTP proxy, or ``None`` when Serve runs without one."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    details = client.get_serve_details()
    if str(details.get("proxy_location") or "").lower().endswith("disabled"):
        return None
    http = details.get("http_options") or {}
    if not http.get("port"):
        return None
    return str(http.get("host") or "127.0.0.1"), int(http["port"])


# -- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _loopback_only(*, mark_processes: bool = True) -> Iterator[None]:
    """While Ray starts (or connects): use 127.0.0.1 as this node's address.

    Ray resolves ``_node_ip_address="127.0.0.1"`` (and a ``127.0.0.1:port`` address to connect
    to) back to the machine's address; the switch it honours is ``ENABLE_RAY_CLUSTER`` (false:
    "use the loopback address"), read from the environment at import, so the module constant is
    set too. Both are restored afterwards, so a later connection to a real cluster from this
    process is not affected. With ``mark_processes``, the Ray processes started meanwhile inherit
    ``LOOPBACK_ENV`` (replicas then keep Serve's gRPC server on loopback too).
    """
    from ray._private import ray_constants

    saved_env = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", LOOPBACK_ENV)}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if mark_processes:
        os.environ[LOOPBACK_ENV] = "1"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def serve_env(throughput_optimized: bool = DEFAULT_THROUGHPUT_OPTIMIZED) -> dict[str, str]:
    """dagserve's tuned Serve settings, as environment variables (also written into the
    ``runtime_env`` of the files ``dagserve build`` writes)."""
    env: dict[str, str] = {}
    if throughput_optimized:
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        # Throughput mode would give each application's root replica an HTTP and a gRPC server
        # of its own ("direct ingress"); dagserve's ingress is its own, so keep them off.
        env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
    # Serve's router retries a request on a back-off of 25 ms doubling to 0.5 s while every replica
    # is busy; shorter steps measured faster recovery after a lost replica and a lower admitted p99
    # under overload (docs/reliability.md). The retry loops are Serve's routing tasks, at most
    # 2 per replica of a deployment, so a 10 ms ceiling costs at most ~200 cheap tries per second
    # per replica, and only while it is saturated. Users can still set their own values.
    env["RAY_SERVE_ROUTER_RETRY_INITIAL_BACKOFF_S"] = "0.005"
    env["RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S"] = "0.01"
    return env


def _set_serve_env(throughput_optimized: bool) -> None:
    """Serve reads these once, when ``ray.serve`` is first imported in a process: set them before
    that (Ray processes started afterwards inherit them)."""
    for key, value in serve_env(throughput_optimized).items():
        os.environ.setdefault(key, value)
    # Throughput mode also runs Serve's request router on the event loop that uses the handle
    # (about 1.7x the requests/s of a router on its own loop, docs/ray.md); the backend makes new
    # handles when an App moves to another loop, and hides the noise the old loop's router makes.
    _quiet_serve_noise()


def merged_runtime_env(job: dict[str, Any] | None, settings: dict[str, str]) -> dict[str, Any]:
    """``job`` (the runtime_env Serve would give a deployment without one of its own) with
    ``settings`` added to its ``env_vars``; the job's own ``env_vars`` win."""
    out = dict(job or {})
    env_vars = {**settings, **(out.get("env_vars") or {})}
    if env_vars:
        out["env_vars"] = env_vars
    return out


def replica_runtime_env() -> dict[str, Any]:
    """The runtime_env of every deployment dagserve creates: this process's Serve settings, so
    replicas run with them on a Ray whose processes were started without (see the module); none
    (Serve's default) on a Ray this process started, whose processes have them already."""
    import ray

    if _inherited() is not None:
        return {}
    return merged_runtime_env(dict(ray.get_runtime_context().runtime_env or {}), _serve_settings())


def settings_report(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """What ``status()`` says of Serve's settings: those this process's handles run with (Serve
    read them when ``ray.serve`` was first imported here) and those the replicas get."""
    from ray.serve._private import constants as c

    carried = runtime_env.get("env_vars") or _inherited() or {}
    return {
        "caller": {
            "throughput_optimized": bool(c.RAY_SERVE_THROUGHPUT_OPTIMIZED),
            "grpc": bool(c.RAY_SERVE_USE_GRPC_BY_DEFAULT),
            "router_in_own_loop": bool(c.RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP),
            "router_retry_backoff_s": [
                float(c.RAY_SERVE_ROUTER_RETRY_INITIAL_BACKOFF_S),
                float(c.RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S),
            ],
        },
        "replica_env": {k: str(carried[k]) for k in sorted(carried) if k.startswith("RAY_SERVE_")},
    }


class _ServeNoise(logging.Filter):
    """Drops errors Serve logs for situations dagserve creates on purpose; nothing is wrong.

    * With the router on the caller's loop, a finished ``asyncio.run()`` (tests, scripts) leaves
      a router and a long-poll client bound to a closed loop; their next callback logs an error.
      The App already uses new handles on its new loop.
    * When a request is cancelled (its deadline passed) while one call's result was handed to
      the next, Serve's router resolves that result in a task of its own; cancelling both calls
      leaves that task's ``RequestCancelledError`` unretrieved, and asyncio logs it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "has been disabled: Bound asyncio event loop is not running" in message:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        if message.startswith("failed to run async callback"):
            return not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed")
        if message.startswith("Task exception was never retrieved") and "ray/serve" in message:
            from ray.exceptions import TaskCancelledError

            return not isinstance(exc, TaskCancelledError)
        return True


_noise_filter = _ServeNoise()


def _quiet_serve_noise() -> None:
    for name in ("ray.serve", "ray._raylet", "asyncio"):
        log = logging.getLogger(name)
        if _noise_filter not in log.filters:
            log.addFilter(_noise_filter)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def token_auth_enabled() -> bool:
    """Does this process talk to Ray with token authentication?"""
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode
    except ImportError:  # pragma: no cover - a Ray without token auth
        return False
    return bool(get_authentication_mode() == AuthenticationMode.TOKEN)


def _is_loopback(address: str) -> bool:
    """Does ``address`` (``"auto"`` read from the environment) point at this machine's loopback?"""
    from ray._private.services import get_ray_address_from_environment, parse_address

    if address == "auto":
        try:
            address = get_ray_address_from_environment("auto", None)
        except Exception:  # noqa: BLE001 - no address to be found: ray.init will say so itself
            return False
    if not address or address.startswith("ray://"):
        return False
    parsed = parse_address(address)
    host = parsed[0] if parsed else ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _serve_settings() -> dict[str, str]:
    return {k: os.environ[k] for k in SERVE_SETTINGS if k in os.environ}


def _inherited() -> dict[str, str] | None:
    """The Serve settings of the Ray this process is connected to, if this process started it."""
    import ray

    if _started_here is None or not ray.is_initialized() or _started_here[0] != _current_address():
        return None
    return _started_here[1]


def _current_address() -> str | None:
    import ray

    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001  # pragma: no cover - very old or client-mode Ray
        return None


def _check_same_cluster(session: RaySession, address: str | None) -> None:
    if address in (None, "auto", "local") or session.address in (None, address):
        return
    current = _current_address()
    if current == address:
        return
    raise DeployError(
        f"This process is already connected to Ray at {current or session.address!r}, so it cannot "
        f"also deploy to {address!r}: one process talks to one Ray cluster. Deploy without address= "
        "to use the running one, or use another process."
    )


def _kv(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())
