"""Node options: one pydantic model, validated when a node is declared.

Defaults are chosen for serving under concurrency, not copied from Ray Serve:

* ``max_ongoing_requests=100``: Serve's own default of 5 starves a replica behind a router
  (about 15 req/s at 32 concurrent clients on a trivial deployment on a 2-core machine).
  A batched node gets at least ``2 * max_batch_size`` so a full batch can form while another runs.
* ``num_cpus=0``: a node reserves no CPU unless asked, so a graph of many small nodes fits on a
  laptop. Set ``num_cpus`` for CPU-heavy models so Ray does not pack too many replicas together.
* ``batch_wait_timeout_s=0.01``: a batch waits at most 10 ms for the callers it expects (a lone
  call, none: see docs/options.md#batching).
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dagserve._errors import OptionsError

__all__ = ["Autoscaling", "NodeOptions", "make_options"]

DEFAULT_MAX_ONGOING_REQUESTS = 100
#: The backend ``deploy`` uses when none is given: every node a Ray Serve deployment (docs/ray.md).
DEFAULT_BACKEND = "ray"
#: A request still running after this many seconds fails with RequestTimeoutError (HTTP 504).
DEFAULT_REQUEST_TIMEOUT_S = 60.0
#: ``deploy`` gives up (DeployError) when deployments are not ready after this many seconds.
DEFAULT_READY_TIMEOUT_S = 120.0


class Autoscaling(BaseModel):
    """Replica autoscaling for one node: every field of Ray Serve's ``AutoscalingConfig``, so a
    config copied from Serve works unchanged (the Ray backend validates it against Serve's own
    model when it deploys). Fields left unset take Serve's defaults, except the replica range
    and target below (docs/options.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    initial_replicas: int | None = Field(None, ge=0)
    upscale_delay_s: float | None = Field(None, ge=0)
    downscale_delay_s: float | None = Field(None, ge=0)
    downscale_to_zero_delay_s: float | None = Field(None, ge=0)
    look_back_period_s: float | None = Field(None, gt=0)
    metrics_interval_s: float | None = Field(None, gt=0)
    aggregation_function: Literal["mean", "max", "min"] | None = None
    upscaling_factor: float | None = Field(None, gt=0)
    downscaling_factor: float | None = Field(None, gt=0)
    smoothing_factor: float | None = Field(None, gt=0)
    upscale_smoothing_factor: float | None = Field(None, gt=0)
    downscale_smoothing_factor: float | None = Field(None, gt=0)
    #: Serve's custom policy: ``{"policy_function": "module:function", "policy_kwargs": {...}}``.
    policy: dict[str, Any] | None = None

    @field_validator("aggregation_function", mode="before")
    @classmethod
    def _enum_value(cls, value: Any) -> Any:
        return getattr(value, "value", value)  # Serve's AggregationFunction enum, as copied from Serve code

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_dict(cls, value: Any) -> Any:
        dump = getattr(value, "model_dump", None)  # Serve's AutoscalingPolicy object
        return dump() if callable(dump) else value

    @model_validator(mode="after")
    def _check_range(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is larger than max_replicas ({self.max_replicas})"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class NodeOptions(BaseModel):
    """Every option a node accepts; unknown names are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    num_replicas: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    autoscaling: Autoscaling | None = None
    max_batch_size: int | None = Field(None, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    num_cpus: float = Field(0.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory: int | None = Field(None, ge=0, description="bytes of memory to reserve per replica")
    resources: dict[str, float] = Field(default_factory=dict)
    max_ongoing_requests: int | None = Field(None, ge=1)
    max_queued_requests: int | None = Field(None, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    retries: int = Field(0, ge=0, le=10)
    inline: bool = False
    #: Where plain ``def`` code runs: ``None`` adapts (threads, inline on the loop once proven
    #: fast: runtime/sync_calls.py), ``True`` always inline, ``False`` always on threads.
    inline_sync: bool | None = None

    @model_validator(mode="after")
    def _check_combinations(self) -> NodeOptions:
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ValueError("num_gpus above 1 must be a whole number (fractions only below 1)")
        if self.inline:
            clash = [
                f
                for f in ("autoscaling", "num_gpus", "memory", "resources")
                if f in self.model_fields_set and getattr(self, f)
            ]
            if "num_replicas" in self.model_fields_set and self.num_replicas != 1:
                clash.append("num_replicas")
            if clash:
                raise ValueError(
                    f"an inline node runs inside the ingress process and cannot set {', '.join(clash)}; "
                    "drop inline=True to give it a deployment of its own"
                )
        return self

    @property
    def effective_max_ongoing_requests(self) -> int:
        """``max_ongoing_requests`` in force, with the default and the batching floor applied."""
        if self.max_ongoing_requests is not None:
            return self.max_ongoing_requests
        floor = 2 * self.max_batch_size if self.max_batch_size else 0
        return max(DEFAULT_MAX_ONGOING_REQUESTS, floor)

    def fixed_bounds(self) -> tuple[int, int | None] | None:
        """``(max_ongoing, max_queued)`` per replica for a node with a fixed replica count, whose
        callers may route its calls themselves (dagserve's direct transport); ``None`` for an
        autoscaled node: Serve's autoscaler sees only the requests its own router sends."""
        if self.autoscaling is not None or self.num_replicas == "auto":
            return None
        return self.effective_max_ongoing_requests, self.max_queued_requests

    def replica_range(self) -> tuple[int, int]:
        """(min, max) replicas this node may run."""
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas, self.autoscaling.max_replicas
        if self.num_replicas == "auto":
            return 1, 4
        return self.num_replicas, self.num_replicas

    def initial_replicas(self) -> int:
        """Replicas to start with."""
        if self.autoscaling is not None:
            a = self.autoscaling
            return a.initial_replicas if a.initial_replicas is not None else max(a.min_replicas, 1)
        if self.num_replicas == "auto":
            return 1
        return self.num_replicas

    def in_force(self) -> dict[str, Any]:
        """Options that differ from a plain node's, for status tables and diagrams."""
        return self.model_dump(exclude_defaults=True, exclude={"name"})


_FIELDS = sorted(NodeOptions.model_fields)


def make_options(owner: str, base: NodeOptions | None = None, **overrides: Any) -> NodeOptions:
    """Validate ``overrides`` on top of ``base``; errors name the node and the bad option."""
    unknown = [k for k in overrides if k not in NodeOptions.model_fields]
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, _FIELDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise OptionsError(
            f"Unknown option {bad!r} for node {owner!r}.{hint} Valid options: {', '.join(_FIELDS)}."
        )
    data: dict[str, Any] = base.model_dump(exclude_unset=True) if base is not None else {}
    if "autoscaling" in overrides and "num_replicas" not in overrides:
        data.pop("num_replicas", None)
    if "num_replicas" in overrides and "autoscaling" not in overrides:
        data.pop("autoscaling", None)
    data.update(overrides)
    if isinstance(data.get("autoscaling"), Autoscaling):
        data["autoscaling"] = data["autoscaling"].model_dump(exclude_unset=True)
    if "autoscaling" in data and data["autoscaling"] is not None and data.get("num_replicas", 1) != 1:
        raise OptionsError(
            f"Node {owner!r} sets both num_replicas={data['num_replicas']!r} and autoscaling; "
            "choose one: a fixed replica count or an autoscaling range."
        )
    try:
        return NodeOptions(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"]
        # pydantic adds union-member names ("int", "literal['auto']") to loc; keep field paths only.
        field = ".".join(str(p) for p in loc[: 2 if loc and loc[0] == "autoscaling" else 1])
        value = first.get("input")
        msg = first["msg"].removeprefix("Value error, ")
        raise OptionsError(
            f"Invalid option {field}={value!r} for node {owner!r}: {msg}."
            if first["loc"]
            else f"Invalid options for node {owner!r}: {msg}."
        ) from None
