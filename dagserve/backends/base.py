"""The small interface every backend implements."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagserve._options import NodeOptions
    from dagserve.compiler.plan import DeploymentSpec, Plan
    from dagserve.runtime.executor import Runner
    from dagserve.runtime.status import AppStatus

__all__ = ["Backend"]


class Backend(abc.ABC):
    """Brings a plan's deployments up, performs call steps, reports and changes them.

    ``deploy`` and ``shutdown`` are synchronous and may block (loading models, starting Ray).
    ``runner`` is used from the App's event loop only.
    """

    name: str = "abstract"

    @abc.abstractmethod
    def deploy(self, plan: Plan, *, ready_timeout_s: float) -> None:
        """Start every deployment of ``plan``; raise :class:`~dagserve.DeployError` if not ready in time."""

    @property
    @abc.abstractmethod
    def runner(self) -> Runner:
        """The :class:`~dagserve.runtime.executor.Runner` the executor calls for each call step."""

    @abc.abstractmethod
    def status(self) -> AppStatus:
        """Per node: target/running/pending replicas and the options in force."""

    @abc.abstractmethod
    def scale(self, spec: DeploymentSpec, options: NodeOptions, *, wait_s: float) -> None:
        """Change one node's replicas (``num_replicas`` or ``autoscaling``) and nothing else."""

    @abc.abstractmethod
    def update(self, spec: DeploymentSpec, new: DeploymentSpec, *, wait_s: float) -> None:
        """Replace one node's options or implementation with a rolling update."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Tear every deployment down; idempotent."""

    def bind_loop(self, loop: Any) -> None:  # noqa: B027 - optional hook
        """Called once with the event loop the App will run requests on."""

    async def prepare(self, timeout_s: float) -> None:  # noqa: B027 - optional hook
        """Open, on the bound loop, what the first request would otherwise open (connections,
        handles), waiting at most ``timeout_s``; never fails a deploy (best effort)."""

    def batch_sizes(self) -> dict[str, dict[int, int]]:
        """Per batched node, how many batches of each size ran since deploy (``{size: count}``).

        Cumulative and summed over the node's replicas, past and present; read when metrics are
        scraped. Backends that cannot see their batches return ``{}``.
        """
        return {}

    def ongoing(self) -> dict[str, int]:
        """Per node, the calls its replicas hold now (running or queued there), for the dashboard.

        Backends that cannot see them cheaply from the caller's process return ``{}``.
        """
        return {}

    def handle_calls(self) -> dict[tuple[str, str, str], list[float]]:
        """The calls nodes made through handles, one observation each, as latency histograms by
        ``(graph, node, outcome)`` (runtime/call_stats.py): those made in the App's process and,
        where replicas run elsewhere (Ray), by the live replicas, summed. Read when metrics are
        scraped (blocking). ``{}`` for a backend without handles."""
        return {}

    def direct_transport_refusals(self) -> dict[tuple[str, str, str], int]:
        """``(node, side, reason) -> count``: peers and connections a transport of the backend's
        own refused (the Ray backend's direct transport: limits, peers of another user, failed
        handshakes; ``side`` ``"caller"`` or ``"replica"``). Read when metrics are scraped;
        ``{}`` for a backend without one."""
        return {}
