"""The exceptions dagserve raises.

One root, one class per kind of failure, so callers can catch by type::

    DagserveError
    ├── GraphError                  building a graph: a misused node, a bad argument
    │   └── OptionsError            an unknown or invalid node option
    ├── CompileError                the graph as a whole does not hold together
    ├── DeployError                 a backend could not bring the graph up (or not in time)
    ├── NodeNotFoundError           scale/update named a node the graph does not have
    ├── AppClosedError              the App was shut down
    ├── RequestError                the caller's payload cannot be served       (HTTP 4xx)
    │   ├── InputValidationError    the payload failed the Input's schema       (HTTP 422)
    │   │   └── ModelIdError        a model id that is not a usable id          (HTTP 422)
    │   ├── NoRouteError            a switch had no case for the value          (HTTP 422)
    │   ├── TensorError             a tensor's name, datatype or shape is wrong (HTTP 400)
    │   ├── ParameterError          a protocol parameter is invalid or unsupported (HTTP 400)
    │   └── ModelNotFoundError      no graph serves the requested model name    (HTTP 404)
    ├── NodeError                   a node raised while serving a request       (HTTP 500)
    ├── HTTPError                   a node chose the answer's status and detail (HTTP 4xx/5xx)
    ├── RequestTimeoutError         a node or the request ran past its deadline (HTTP 504)
    ├── OverloadedError             a queue was full; retry later               (HTTP 503)
    ├── GraphOutputError            the output does not fit the protocol served (HTTP 500)
    ├── JobNotFoundError            no job has that id (or its result expired)  (HTTP 404)
    ├── JobCancelledError           the job was cancelled before it finished    (HTTP 409)
    ├── JobAttemptsExhaustedError   the job's server died on every attempt      (HTTP 500)
    ├── JobStoreError               the jobs store (SQLite, Redis) failed       (HTTP 503)
    └── RenderError                 a diagram could not be drawn
        └── GraphvizNotFoundError   Graphviz's `dot` program is not installed

Every message says what happened, where (the node's name) and how to fix it.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = [
    "AppClosedError",
    "CompileError",
    "DagserveError",
    "DeployError",
    "GraphError",
    "GraphOutputError",
    "GraphvizNotFoundError",
    "HTTPError",
    "InputValidationError",
    "JobAttemptsExhaustedError",
    "JobCancelledError",
    "JobNotFoundError",
    "JobStoreError",
    "ModelIdError",
    "ModelNotFoundError",
    "NoRouteError",
    "NodeError",
    "NodeNotFoundError",
    "OptionsError",
    "OverloadedError",
    "ParameterError",
    "RenderError",
    "RequestError",
    "RequestTimeoutError",
    "TensorError",
]


class DagserveError(Exception):
    """Root of every error dagserve raises on purpose."""

    #: HTTP status the ingress answers with for this error.
    status_code: int = 500


class GraphError(DagserveError):
    """A graph was built wrongly: fix the code that builds it."""


class OptionsError(GraphError):
    """A node option is unknown or has an invalid value."""


class CompileError(DagserveError):
    """The graph as a whole is invalid (inputs, dead nodes, types across an edge)."""


class DeployError(DagserveError):
    """A backend could not deploy the graph, or not within the readiness bound."""

    status_code = 503


class NodeNotFoundError(DagserveError, LookupError):
    """An operation named a node that the graph does not have."""

    status_code = 404


class AppClosedError(DagserveError):
    """The App was shut down; deploy the graph again to use it."""

    status_code = 503


class RequestError(DagserveError):
    """The request cannot be served as sent; the caller should change it."""

    status_code = 400


class InputValidationError(RequestError):
    """The payload failed the graph Input's pydantic schema.

    ``errors`` lists each field error as ``{"loc": [...], "msg": ..., "type": ...}``.
    """

    status_code = 422

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.errors))


class ModelIdError(InputValidationError):
    """A multiplexed node's model id (``model_id=``, or the ``x-dagserve-model-id`` header) is not
    a non-empty string of at most 256 printable characters; ``node`` names the node."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None, node: str | None = None) -> None:
        super().__init__(message, errors)
        self.node = node

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.errors, self.node))


class NoRouteError(RequestError):
    """A switch got a value that matches none of its cases and it has no default."""

    status_code = 422


class TensorError(RequestError):
    """A request's tensor does not fit the graph: an unknown or missing input, a wrong datatype
    or shape, data that does not match its shape. ``input`` names the input to blame."""

    status_code = 400

    def __init__(self, message: str, *, input: str | None = None) -> None:
        super().__init__(message)
        self.input = input

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_tensor_error, (type(self), str(self), self.input))


def _rebuild_tensor_error(cls: type[TensorError], message: str, input: str | None) -> TensorError:
    return cls(message, input=input)


class ParameterError(RequestError):
    """A request parameter of a protocol (the OpenAI routes) is invalid, or valid but not supported
    by the graph (``n > 1``, ``tools`` for a graph without them): refused, never ignored.

    ``param`` names it (``"messages[0].role"``), ``code`` says why (``"unsupported_parameter"``).
    """

    status_code = 400

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_parameter, (type(self), str(self), self.param, self.code))


def _rebuild_parameter(cls: type[ParameterError], message: str, param: str | None, code: str | None) -> ParameterError:
    return cls(message, param=param, code=code)


class ModelNotFoundError(RequestError, LookupError):
    """A request named a model (``"model": ...``) that no graph here serves."""

    status_code = 404


class NodeError(DagserveError):
    """A node raised while serving a request; the original exception is ``__cause__``.

    ``node`` is the failing node's name, ``error_type`` the original exception's type name,
    ``traceback`` the original's traceback as text with the node code's frames (dagserve's and
    Ray's trimmed), for the server's log: it crosses processes with the error, where the chained
    original does not.
    """

    status_code = 500

    def __init__(
        self, message: str, *, node: str, error_type: str = "Exception", traceback: str | None = None
    ) -> None:
        super().__init__(message)
        self.node = node
        self.error_type = error_type
        self.traceback = traceback

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the node name and traceback when the error crosses a process (Ray pickles it).
        return (_rebuild_node_error, (type(self), str(self), self.node, self.error_type, self.traceback))


def _rebuild_node_error(
    cls: type[NodeError], message: str, node: str, error_type: str, traceback: str | None = None
) -> NodeError:
    return cls(message, node=node, error_type=error_type, traceback=traceback)


class HTTPError(DagserveError):
    """Raised by a node to make the request answer with ``status_code`` and ``detail``::

        @dagserve.node
        def lookup(user_id: str) -> dict:
            if user_id not in USERS:
                raise dagserve.HTTPError(404, f"No user {user_id!r}.")
            return USERS[user_id]

    The ingress answers in the usual error shape with this status, ``detail`` as the message and
    the node named; ``App.call`` raises it. A node raising Starlette's (or FastAPI's)
    ``HTTPException`` gets the same treatment. ``headers`` (optional) go on the answer.
    """

    def __init__(self, status_code: int, detail: Any = None, *, headers: dict[str, str] | None = None) -> None:
        if isinstance(status_code, bool) or not isinstance(status_code, int) or not 400 <= status_code <= 599:
            raise ValueError(f"HTTPError takes an HTTP error status (400-599), got {status_code!r}.")
        self.status_code = status_code
        self.detail = detail
        self.headers = dict(headers or {})
        #: The node that raised it (set by dagserve on the way out of the node).
        self.node: str | None = None
        #: The ``type`` of the error document: this class's name, or the original exception's.
        self.error_type = type(self).__name__
        super().__init__(detail if isinstance(detail, str) else _status_phrase(status_code) if detail is None else repr(detail))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_http_error, (type(self), self.__dict__.copy(), self.args))


def _rebuild_http_error(cls: type[HTTPError], state: dict[str, Any], args: tuple[Any, ...]) -> HTTPError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


def _status_phrase(status: int) -> str:
    import http

    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


class RequestTimeoutError(DagserveError, TimeoutError):
    """A node's ``timeout_s`` or the request's deadline passed; ``node`` was still running."""

    status_code = 504

    def __init__(self, message: str, *, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_timeout, (type(self), str(self), self.node))


def _rebuild_timeout(cls: type[RequestTimeoutError], message: str, node: str | None) -> RequestTimeoutError:
    return cls(message, node=node)


class OverloadedError(DagserveError):
    """A bounded queue was full; the request was rejected without running. Retry later."""

    status_code = 503

    def __init__(self, message: str, *, node: str | None = None, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.node = node
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_overloaded, (type(self), str(self), self.node, self.retry_after_s))


def _rebuild_overloaded(
    cls: type[OverloadedError], message: str, node: str | None, retry_after_s: float
) -> OverloadedError:
    return cls(message, node=node, retry_after_s=retry_after_s)


class JobNotFoundError(DagserveError, LookupError):
    """No job has this id here: it never existed, or it finished longer ago than the results are
    kept (``--jobs-ttl``)."""

    status_code = 404


class JobCancelledError(DagserveError):
    """The job was cancelled (``job.cancel()``, ``DELETE /-/jobs/{id}``) before it finished."""

    status_code = 409


class JobAttemptsExhaustedError(DagserveError):
    """The job's server stopped (crashed, was killed) while running it on every attempt
    (``--jobs-max-attempts``); the job failed for good instead of running again."""

    status_code = 500


class JobStoreError(DagserveError):
    """The store of the job queue (the SQLite file, the Redis server) failed or cannot be reached;
    nothing was stored. Retry later; the server's log has the store's own error."""

    status_code = 503


class GraphOutputError(DagserveError):
    """A graph's output does not fit the protocol it is served by (an OpenAI model's graph that
    yields something other than text or ``{"content": ...}`` dicts); fix the graph."""


class RenderError(DagserveError):
    """A diagram could not be drawn: an unknown output format, or Graphviz's ``dot`` failed."""


class GraphvizNotFoundError(RenderError):
    """Graphviz's ``dot`` program is not on PATH; ``to_dot()`` still works without it."""


#: Every value of the ``outcome`` label, in the order tables show them.
OUTCOMES = ("ok", "client_error", "node_error", "timeout", "overloaded", "cancelled", "error")


def outcome_of(error: BaseException | None) -> str:
    """The ``outcome`` label of a finished request: ``ok``, ``client_error`` (the caller's payload,
    HTTP 4xx), ``node_error`` (a node raised), ``timeout``, ``overloaded`` (a queue was full),
    ``cancelled`` (the caller went away) or ``error`` (anything else, e.g. a closed App)."""
    if error is None:
        return "ok"
    if isinstance(error, RequestError):
        return "client_error"
    if isinstance(error, NodeError):
        return "node_error"
    if isinstance(error, HTTPError):  # a status a node chose (or the ingress answered)
        return "client_error" if error.status_code < 500 else "node_error"
    if isinstance(error, RequestTimeoutError):
        return "timeout"
    if isinstance(error, OverloadedError):
        return "overloaded"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return "error"
