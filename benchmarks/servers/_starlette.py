"""A Starlette app on uvicorn (uvloop + httptools, no access log), shared by the non-Serve servers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks.servers._cli import HOST

#: What a case does with the request's ``x``.
Compute = Callable[[int], Awaitable[dict[str, Any]]]


def build_app(computes: Mapping[str, Compute]) -> Starlette:
    """One ``POST /<case>`` route per case name."""

    def endpoint_for(compute: Compute) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def endpoint(request: Request) -> JSONResponse:
            body = await request.json()
            return JSONResponse(await compute(body["x"]))

        return endpoint

    routes = [Route(f"/{name}", endpoint_for(c), methods=["POST"]) for name, c in computes.items()]
    return Starlette(routes=routes)


def serve_forever(app: Starlette, port: int) -> None:
    """Run until SIGTERM/SIGINT; uvicorn then re-raises the signal, so callers use ``finally``."""
    uvicorn.run(
        app,
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )
