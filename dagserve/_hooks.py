"""The few calls that point up the layers, filled in by ``dagserve/__init__.py``.

Imports point one way (docs/architecture.md): the graph model knows nothing of rendering, the App
nothing of HTTP, the Ray backend nothing of the ingress. These still need a
higher layer: ``Graph.render()`` (the render module), ``App.asgi()`` (the HTTP layer), a job's
result written as JSON as the HTTP routes write it (``app.submit``),
``ingress_replicas=N`` on the Ray backend (the ingress as a Serve deployment) and a Ray
replica's spans when traces are exported (observe/otel.py). The lower layer
calls the hook named here; the package's ``__init__``, which sits above every layer, sets it.
Nothing else belongs in this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Hooks", "hooks"]


class Hooks:
    """Upward calls, each ``None`` until ``dagserve/__init__.py`` wires it."""

    #: ``dagserve.render.to_dot(graph, **kwargs) -> str``
    to_dot: Callable[..., str] | None = None
    #: ``dagserve.render.render(graph, path, **kwargs) -> Path``
    render: Callable[..., Any] | None = None
    #: ``dagserve.render.to_svg(graph) -> str``
    to_svg: Callable[..., str] | None = None
    #: ``dagserve.http.server.asgi_app(app, **options)``
    asgi_app: Callable[..., Any] | None = None
    #: ``(ingress_options) -> (the Serve ingress deployment's class, the options with their tokens
    #: resolved in this process)``; loads ray, so it is called only with ``ingress_replicas``.
    serve_ingress: Callable[[dict[str, Any]], tuple[type, dict[str, Any]]] | None = None
    #: ``dagserve.observe.otel.replica_spans(endpoint, replica_id) -> ReplicaSpans``: a Ray
    #: replica's spans, exported over OTLP; imports the OpenTelemetry SDK, so only when tracing.
    replica_spans: Callable[[str, str], Any] | None = None
    #: ``dagserve.http.jsonio.dump_json(value) -> bytes``: jobs store payloads and results as the
    #: HTTP routes write JSON (numpy arrays, pydantic models ...).
    dump_json: Callable[[Any], bytes] | None = None

    def need(self, name: str) -> Callable[..., Any]:
        """The hook ``name``; a clear error when dagserve was not imported as a package."""
        fn = getattr(self, name)
        if fn is None:  # pragma: no cover - only when a submodule is loaded without its package
            raise RuntimeError(f"dagserve hook {name!r} is not wired; import dagserve first.")
        return fn  # type: ignore[no-any-return]


#: The one instance the layers read.
hooks = Hooks()
