"""Structured logs (observe/logs.py): one JSON access record per request with its ids, status,
duration and per-node times; trace ids on every record of a request; ``--log-format json``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest

import dagserve
from dagserve.cli.run import _logging_to_stderr
from dagserve.observe.logs import ACCESS_LOGGER, JsonFormatter, TraceIdFilter, access_observer, status_of
from dagserve.observe.traceparent import request_trace

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
node_log = logging.getLogger("tests.node")


@dagserve.node
async def double(x: int) -> int:
    node_log.warning("doubling %s", x)
    if x < 0:
        raise ValueError("negative")
    return 2 * x


@dagserve.node
def inc(x: int) -> int:
    return x + 1


def graph() -> dagserve.Graph:
    with dagserve.Input() as inp:
        return dagserve.Graph(inc(double(inp)), name="logged")


class Lines(logging.Handler):
    """Formats records as dagserve run --log-format json does, and keeps the lines."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(TraceIdFilter())
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    loggers = [logging.getLogger(ACCESS_LOGGER), node_log]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    yield handler
    for lg in loggers:
        lg.removeHandler(handler)
        lg.setLevel(logging.NOTSET)


def test_one_json_access_record_per_request_with_ids_status_and_node_times(lines: Lines) -> None:
    with dagserve.deploy(graph(), backend="local") as app:
        app.observers.append(access_observer)
        ctx = dagserve.RequestContext(request_id="req-1", trace=request_trace(f"00-{TRACE}-00f067aa0ba902b7-01"))
        assert asyncio.run(app.acall(3, context=ctx)) == 7
        with pytest.raises(dagserve.NodeError):
            app.call(-1, request_id="req-2")
    records = [json.loads(line) for line in lines.lines]
    node_record, access, failed_node, failed = records
    assert node_record["message"] == "doubling 3" and node_record["logger"] == "tests.node"
    assert node_record["request_id"] == "req-1" and node_record["trace_id"] == TRACE  # node code's records too
    assert access["logger"] == ACCESS_LOGGER and access["level"] == "INFO"
    assert access["request_id"] == "req-1" and access["trace_id"] == TRACE
    assert access["graph"] == "logged" and access["status"] == 200 and access["outcome"] == "ok"
    assert set(access["nodes"]) == {"double", "inc"} and access["duration_ms"] >= max(access["nodes"].values())
    assert access["time"].endswith("Z")
    assert failed_node["request_id"] == "req-2" and "trace_id" not in failed_node  # app.call: no trace context
    assert failed["status"] == 500 and failed["outcome"] == "node_error" and failed["failed_node"] == "double"
    assert "trace_id" not in failed and set(failed["nodes"]) == {"double"}


def test_status_of_each_outcome() -> None:
    assert status_of(None) == 200
    assert status_of(dagserve.InputValidationError("bad", [])) == 422
    assert status_of(dagserve.RequestTimeoutError("slow")) == 504
    assert status_of(asyncio.CancelledError()) == 499
    assert status_of(RuntimeError("x")) == 500


def test_the_access_logger_off_costs_nothing(lines: Lines) -> None:
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)
    with dagserve.deploy(graph(), backend="local") as app:
        app.observers.append(access_observer)
        app.call(1)
    assert [json.loads(line)["logger"] for line in lines.lines] == ["tests.node"]


def test_serve_refuses_an_unknown_log_format_before_deploying() -> None:
    with pytest.raises(dagserve.OptionsError, match="log_format must be one of text, json"):
        dagserve.serve(graph(), backend="local", log_format="xml")


def test_log_format_json_writes_every_record_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    with _logging_to_stderr("info", "json"):
        logging.getLogger("dagserve.test").warning("hello %s", "there", extra={"graph": "g"})
        try:
            raise KeyError("k")
        except KeyError:
            logging.getLogger("dagserve.test").exception("failed")
    with _logging_to_stderr("info"):
        logging.getLogger("dagserve.test").warning("plain")
    err = capsys.readouterr().err.splitlines()
    first, second = json.loads(err[0]), json.loads(err[1])
    assert first["message"] == "hello there" and first["graph"] == "g" and first["level"] == "WARNING"
    assert "request_id" not in first  # outside a request
    assert second["message"] == "failed" and "KeyError" in second["exception"]
    rest = err[2:]
    assert any(line.endswith("dagserve.test [-] plain") for line in rest), rest  # text: unchanged
