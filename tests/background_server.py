"""A uvicorn server on a thread, for tests: ``with BackgroundServer(app.asgi()) as url: ...``."""

from __future__ import annotations

import threading
from typing import Any

from dagserve._errors import DagserveError
from dagserve.http.connections import make_server
from dagserve.http.settings import ServerOptions

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """Serves an ASGI app with uvicorn on a thread (tests, notebooks, benchmarks)::

        with BackgroundServer(dagserve.asgi_app(app)) as url:
            httpx.post(url, json={...})

    ``port=0`` (the default) picks a free port; ``url`` is known once started.
    """

    def __init__(self, web: Any, *, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self._ready = threading.Event()
        options.setdefault("log_level", "warning")
        companions = options.pop("companions", ())
        server = ServerOptions(host=host, port=port, **options)
        self.server = make_server(web, server, on_ready=lambda url: self._ready.set(), companions=companions)
        self._thread = threading.Thread(target=self._run, name="dagserve-http", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        if self.server.url is None:
            raise DagserveError("The server has not started yet.")
        return str(self.server.url)

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # SystemExit from uvicorn when the port is taken
            self._error = exc
        finally:
            self._ready.set()

    def start(self, timeout_s: float = 30.0) -> str:
        self._thread.start()
        if not self._ready.wait(timeout_s) or self.server.url is None:
            self.stop()
            raise DagserveError(f"The HTTP server did not start within {timeout_s:g} s: {self._error!r}.")
        return self.url

    def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful stop: in-flight requests finish (within the shutdown timeout)."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
