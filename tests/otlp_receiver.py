"""A small OTLP/HTTP trace receiver on 127.0.0.1, for tests: keeps every span it is sent.

``with Receiver() as r:`` then point an exporter at ``r.url``; ``r.wait_for(...)`` polls (bounded)
for the spans a test expects.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["Receiver"]


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()
        spans, lock = self.spans, self.lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            spans.extend(scope.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, span_ids: set[bytes], timeout_s: float = 60.0) -> dict[bytes, Any]:
        """The received spans whose parent is one of ``span_ids``, once there is one for each."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                children = {s.parent_span_id: s for s in self.spans if s.parent_span_id in span_ids}
            if len(children) == len(span_ids) or time.monotonic() > deadline:
                return children
            time.sleep(0.1)

    def wait_until(self, predicate: Callable[[list[Any]], bool], timeout_s: float = 60.0) -> list[Any]:
        """Every span received, once ``predicate(spans)`` holds or ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
