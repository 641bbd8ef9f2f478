"""The workloads written by hand as Ray Serve's docs show model composition.

Each case is one Serve application: an ingress deployment, reached through Serve's own HTTP
proxy, that calls the other deployments through DeploymentHandles, passing un-awaited
DeploymentResponses along as the docs do. The single-node cases (``batched``, ``unbatched``,
``replicas*``) are one deployment that is its own ingress, as in the docs' batching guide.

Kept in an importable module (not ``__main__``) so replicas import these classes by reference.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from benchmarks.servers import work
from benchmarks.workloads import FANOUT_BRANCHES, MAX_BATCH, Case, Workload

#: Short, since under load the next batch fills while the current one runs anyway.
BATCH_WAIT_TIMEOUT_S = 0.005


async def _x(request: Request) -> int:
    body = await request.json()
    return int(body["x"])


@serve.deployment
class Pre:
    def __call__(self, n: int) -> int:
        return work.pre(n)


@serve.deployment
class Model:
    def __call__(self, n: int) -> int:
        return work.model(n)


@serve.deployment
class Post:
    def __call__(self, n: int) -> dict[str, Any]:
        return work.post(n)


@serve.deployment
class ChainIngress:
    def __init__(self, pre: DeploymentHandle, model: DeploymentHandle, post: DeploymentHandle) -> None:
        self._pre, self._model, self._post = pre, model, post

    async def __call__(self, request: Request) -> dict[str, Any]:
        return await self._post.remote(self._model.remote(self._pre.remote(await _x(request))))


@serve.deployment
class Step:
    def __call__(self, n: int) -> int:
        return work.step(n)


@serve.deployment
class HopIngress:
    def __init__(self, *steps: DeploymentHandle) -> None:
        self._steps = steps

    async def __call__(self, request: Request) -> dict[str, Any]:
        response: Any = await _x(request)
        for step in self._steps:
            response = step.remote(response)
        return work.post(await response)


@serve.deployment
class BatchedModel:
    def __init__(self) -> None:
        self._device = work.Device()

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
    async def _predict(self, xs: list[int]) -> list[dict[str, Any]]:
        return await self._device.run(xs)

    async def __call__(self, request: Request) -> dict[str, Any]:
        return await self._predict(await _x(request))


@serve.deployment
class UnbatchedModel:
    def __init__(self) -> None:
        self._device = work.Device()

    async def __call__(self, request: Request) -> dict[str, Any]:
        (answer,) = await self._device.run([await _x(request)])
        return answer


@serve.deployment
class Branch:
    def __init__(self, i: int) -> None:
        self._i = i

    async def __call__(self, n: int) -> int:
        return await work.branch(n, self._i)


@serve.deployment
class Combine:
    def __call__(self, *values: int) -> dict[str, Any]:
        return work.combine(list(values))


@serve.deployment
class FanoutIngress:
    def __init__(self, combine: DeploymentHandle, *branches: DeploymentHandle) -> None:
        self._combine, self._branches = combine, branches

    async def __call__(self, request: Request) -> dict[str, Any]:
        x = await _x(request)
        return await self._combine.remote(*(branch.remote(x) for branch in self._branches))


@serve.deployment
class Burner:
    async def __call__(self, request: Request) -> dict[str, Any]:
        return work.burn(await _x(request))


def build_application(workload: Workload, case: Case, options: dict[str, Any]) -> Application:
    """The Serve application for one case; ``options`` go to every deployment in it."""

    def opt(deployment: Any, name: str, **extra: Any) -> Any:
        return deployment.options(name=name, **options, **extra)

    if workload.name == "chain":
        return opt(ChainIngress, "ingress").bind(
            opt(Pre, "pre").bind(), opt(Model, "model").bind(), opt(Post, "post").bind()
        )
    if workload.name == "hop":
        assert case.hops is not None
        steps = [opt(Step, f"step{i}").bind() for i in range(1, case.hops + 1)]
        return opt(HopIngress, "ingress").bind(*steps)
    if workload.name == "batched":
        model = BatchedModel if case.batching else UnbatchedModel
        return opt(model, "model").bind()
    if workload.name == "fanout":
        branches = [opt(Branch, f"branch{i}").bind(i) for i in range(FANOUT_BRANCHES)]
        return opt(FanoutIngress, "ingress").bind(opt(Combine, "combine").bind(), *branches)
    if workload.name == "replicas":
        return opt(Burner, "burner", num_replicas=case.replicas).bind()
    raise ValueError(f"no Serve graph for workload {workload.name!r}")
