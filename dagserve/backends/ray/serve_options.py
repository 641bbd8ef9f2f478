"""What Serve gets for each plan deployment: its ``serve.deployment(...)`` options (NodeOptions
mapped onto Serve's: replicas or autoscaling, CPU/GPU share, queue bounds, health checks) and the
:class:`ReplicaSpec` its replicas are constructed with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dagserve._errors import OptionsError
from dagserve.backends.ray.direct.frames import FrameLimits
from dagserve.backends.ray.replica import ReplicaSpec, ship
from dagserve.runtime.tracing import otlp_endpoint

if TYPE_CHECKING:
    from dagserve._options import Autoscaling
    from dagserve.compiler.plan import DeploymentSpec

__all__ = [
    "DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S",
    "DEFAULT_HEALTH_CHECK_PERIOD_S",
    "DEFAULT_HEALTH_CHECK_TIMEOUT_S",
    "actor_options",
    "autoscaling_config",
    "deployment_options",
    "replica_spec",
]

#: Serve health-check cadence for node replicas: faster than Serve's 10 s / 30 s so a hung
#: replica is replaced within ~15 s (docs/reliability.md), slow enough to cost nothing.
DEFAULT_HEALTH_CHECK_PERIOD_S = 5.0
DEFAULT_HEALTH_CHECK_TIMEOUT_S = 10.0
#: A replica being removed (scale-down, update, shutdown) finishes its requests for up to this long.
DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S = 10.0
#: How often a draining replica checks whether it is idle (Serve's default is 2 s).
_GRACEFUL_SHUTDOWN_WAIT_LOOP_S = 0.5
#: A constructor that raises is retried this many times before the node is reported failed
#: (Serve's default, 20, hides a deterministic __init__ error behind minutes of retries).
_MAX_CONSTRUCTOR_RETRIES = 3
#: Replica range for ``num_replicas="auto"``, matching ``NodeOptions.replica_range``.
_AUTO_SCALING = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2.0}


def deployment_options(
    spec: DeploymentSpec,
    *,
    health_check_period_s: float = DEFAULT_HEALTH_CHECK_PERIOD_S,
    health_check_timeout_s: float = DEFAULT_HEALTH_CHECK_TIMEOUT_S,
    graceful_shutdown_timeout_s: float = DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
    runtime_env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``serve.deployment(...)`` keyword arguments for one plan deployment; ``runtime_env``
    is what the backend gives every deployment (Serve's settings, ``cluster.replica_runtime_env``)."""
    o = spec.options
    actor: dict[str, Any] = {"num_cpus": o.num_cpus}
    if runtime_env:
        actor["runtime_env"] = runtime_env
    if o.num_gpus:
        actor["num_gpus"] = o.num_gpus
    if o.memory is not None:
        actor["memory"] = o.memory
    if o.resources:
        actor["resources"] = dict(o.resources)
    out: dict[str, Any] = {
        "name": spec.name,
        "ray_actor_options": actor,
        "max_ongoing_requests": o.effective_max_ongoing_requests,
        "health_check_period_s": health_check_period_s,
        "health_check_timeout_s": health_check_timeout_s,
        "graceful_shutdown_timeout_s": graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": _GRACEFUL_SHUTDOWN_WAIT_LOOP_S,
        "max_constructor_retry_count": _MAX_CONSTRUCTOR_RETRIES,
    }
    if o.max_queued_requests is not None:
        out["max_queued_requests"] = o.max_queued_requests
    if o.autoscaling is not None:
        out["autoscaling_config"] = autoscaling_config(spec.name, o.autoscaling)
    elif o.num_replicas == "auto":
        out["autoscaling_config"] = dict(_AUTO_SCALING)
    else:
        out["num_replicas"] = o.num_replicas
    return out


def autoscaling_config(node: str, a: Autoscaling) -> dict[str, Any]:
    """Serve's ``autoscaling_config`` for node ``node``: every field set (the replica range and
    target always), checked against Serve's own ``AutoscalingConfig``."""
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig

    config = a.model_dump(exclude_none=True)
    try:
        AutoscalingConfig(**config)
    except (ValidationError, TypeError, ValueError) as exc:
        raise OptionsError(f"Invalid autoscaling for node {node!r}: Ray Serve refuses it: {exc}") from None
    return config


def replica_spec(spec: DeploymentSpec, *, direct: bool = True, frames: FrameLimits | None = None) -> ReplicaSpec:
    """What a replica is constructed with (no graph objects, so it pickles small)."""
    o = spec.options
    return ReplicaSpec(
        name=spec.name,
        kind=spec.kind,
        target=ship(spec.target),
        methods=spec.methods,
        async_methods=frozenset(spec.async_methods),
        init_args=tuple(spec.init_args),
        init_kwargs=dict(spec.init_kwargs),
        max_batch_size=o.max_batch_size,
        batch_wait_timeout_s=o.batch_wait_timeout_s,
        inline_sync=o.inline_sync,
        direct=direct,
        frames=frames or FrameLimits(),
        otlp_endpoint=otlp_endpoint(),  # this process's setting at deploy time: replicas export there too
        multiplexed=spec.multiplexed.loader if spec.multiplexed is not None else None,
    )


def actor_options(spec: DeploymentSpec) -> dict[str, Any]:
    """The Ray actor options of the node's replicas (a change restarts them)."""
    return deployment_options(spec)["ray_actor_options"]  # type: ignore[no-any-return]
