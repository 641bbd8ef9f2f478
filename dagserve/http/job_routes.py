"""The job routes of the ingress (docs/jobs.md): submit now, fetch the graph's answer later.

::

    POST   /<graph>/jobs     queue a job with the graph route's body: 202 {"id", "status": "queued"},
                             Location: <mount path>/-/jobs/<id>; Idempotency-Key: the first job again
    POST   /jobs             the same, when one graph is served
    GET    /-/jobs/<id>      the job: id, graph, status, attempts, created/started/finished, and its
                             result (as the graph route answers) or error (the usual error shape)
    DELETE /-/jobs/<id>      cancel a queued or running job
    GET    /-/jobs           list them: ?graph=&status=&limit=&after=<id of the last one seen>

Every route takes the graph routes' bearer token. Body limits, admission and the error shape are
the ingress's own (:class:`~dagserve.http.ingress.Ingress`); the queue is the App's
(``app.job_queue()``, :mod:`dagserve.jobs`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dagserve._errors import JobNotFoundError
from dagserve.http.bodies import graph_door
from dagserve.http.calls import Call
from dagserve.http.doors import Door
from dagserve.http.errors import HTTPError, error_from_exception
from dagserve.http.jsonio import dump_json
from dagserve.http.middleware import SCOPE_REQUEST_ID
from dagserve.jobs import FINISHED, STATUSES, JobQueue, JobRecord
from dagserve.jobs.error_record import rebuild_error
from dagserve.runtime.executor import validate_payload
from dagserve.runtime.request_id import new_request_id

if TYPE_CHECKING:
    from starlette.requests import Request as _Request

    from dagserve.app import App
    from dagserve.http.settings import IngressConfig


class Ingress(Protocol):
    """What the job routes use of :class:`~dagserve.http.ingress.Ingress` (which holds them)."""

    apps: dict[str, App]
    single: bool
    config: IngressConfig
    admitted: int

    def authorize(self, request: _Request) -> None: ...
    async def run_request(
        self, request: _Request, door: Door, answer: Callable[[Call], Awaitable[Response]]
    ) -> Response: ...


def _decode_job(body: bytes, scope: Any, max_depth: int) -> tuple[Any, str]:
    """A submission's payload (checked against the schema) and its body, as the job stores it."""
    payload, _ = _JSON_DOOR.decode(body, scope, max_depth)
    return payload, body.decode("utf-8")


#: The graph routes' JSON (http/bodies.py), kept whole for the store.
_JSON_DOOR = graph_door(None, 1, 1)
_JOB_DOOR = dataclasses.replace(_JSON_DOOR, decode=_decode_job, streams=False)

__all__ = ["JOBS_PATH", "JobRoutes", "job_paths", "job_schemas"]

#: Where a job's record lives (under the path the ingress is mounted at).
JOBS_PATH = "/-/jobs"
_JSON = "application/json"
#: Bodies up to this size are parsed on the event loop; larger ones on a thread (as the graph route).
_PARSE_INLINE_BYTES = 64 * 1024
_MAX_LIMIT = 1000


class JobRoutes:
    """The job routes of ``ingress``; the queues are its Apps' (one per App deployed together)."""

    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress

    def routes(self) -> list[BaseRoute]:
        routes = self.ingress.graph_routes("/jobs", self._submit_endpoint, "jobs_submit")
        routes += [
            Route(JOBS_PATH, self._list, methods=["GET"], name="jobs_list"),
            Route(JOBS_PATH + "/{job_id}", self._one, methods=["GET", "DELETE"], name="job"),
        ]
        return routes

    def queues(self) -> list[JobQueue]:
        """The distinct queues of the served Apps (their workers started on this loop)."""
        out: list[JobQueue] = []
        for app in self.ingress.apps.values():
            queue = app.job_queue()
            if all(queue is not q for q in out):
                out.append(queue)
                if self._load not in queue.loads:
                    queue.loads.append(self._load)  # jobs yield to this ingress's requests too
        return out

    def _load(self) -> int:
        return self.ingress.admitted

    async def stop(self) -> None:
        """Stop the workers (the server is stopping): jobs running here go back to their queue."""
        await asyncio.gather(*(q.stop() for q in self.queues()), return_exceptions=True)

    # -- submitting --------------------------------------------------------------------------------
    def _submit_endpoint(self, app: App) -> Callable[[Request], Awaitable[Response]]:
        async def submit_job(request: Request) -> Response:
            # The one request path every door takes (token, admission while the body arrives and is
            # stored, limits, errors): a running job holds no slot.
            return await self.ingress.run_request(request, _JOB_DOOR, functools.partial(self._store, app))

        return submit_job

    async def _store(self, app: App, call: Call) -> Response:
        """The submission's answer: the job stored (202), or the first job of its idempotency key."""
        request = call.request
        validate_payload(app.plan.input_schema, call.payload)  # refused now (422), not when it runs
        record, created = await app.job_queue().asubmit(app.name, call.state, request.headers.get("idempotency-key"))
        location = f"{request.scope.get('root_path', '')}{JOBS_PATH}/{record.id}"
        answer_headers = {"location": location}
        if not created:
            answer_headers["idempotent-replayed"] = "true"
        return _json({"id": record.id, "status": record.status}, 202 if created else 200, answer_headers)

    # -- reading and cancelling --------------------------------------------------------------------
    async def _find(self, job_id: str) -> tuple[JobQueue, JobRecord]:
        for queue in self.queues():
            record = await queue.aget(job_id)
            if record is not None:
                return queue, record
        raise JobNotFoundError(
            f"There is no job {job_id!r}: it never existed here, or it finished longer ago than results are kept (--jobs-ttl)."
        )

    async def _one(self, request: Request) -> Response:
        """One route for both methods, so that a 405 lists them both in ``Allow``."""
        return await (self._cancel(request) if request.method == "DELETE" else self._show(request))

    async def _show(self, request: Request) -> Response:
        self.ingress.authorize(request)
        _, record = await self._find(request.path_params["job_id"])
        return Response(self._document(record), media_type=_JSON)

    async def _cancel(self, request: Request) -> Response:
        self.ingress.authorize(request)
        queue, record = await self._find(request.path_params["job_id"])
        if record.status in FINISHED:
            raise HTTPError(409, f"Job {record.id} already {record.status}; there is nothing to cancel.", error_type="JobFinished")
        record = await queue.acancel(record.id) or record
        return Response(self._document(record), media_type=_JSON)

    async def _list(self, request: Request) -> Response:
        self.ingress.authorize(request)
        query = request.query_params
        limit = _limit(query.get("limit"))
        graph, status, after = query.get("graph"), query.get("status"), query.get("after")
        found: list[JobRecord] = []
        for queue in self.queues():
            found += await queue.alist(graph=graph, status=status, limit=limit, after=after)
        found.sort(key=lambda r: (r.created, r.seq))
        page = found[:limit]
        jobs = [self._view(r, result=False) for r in page]
        return _json({"jobs": jobs, "next": page[-1].id if len(page) == limit else None})

    def _view(self, record: JobRecord, *, result: bool = True) -> dict[str, Any]:
        view = record.to_dict(result=result)
        if record.error is not None:
            _, body, _ = error_from_exception(rebuild_error(record.error), request_id=record.id)
            view["error"] = body["error"]
        return view

    def _document(self, record: JobRecord) -> bytes:
        return dump_json(self._view(record))


def _limit(value: str | None) -> int:
    if value is None:
        return 100
    if not value.isdigit() or not 1 <= int(value) <= _MAX_LIMIT:
        raise HTTPError(400, f"limit={value!r} must be a whole number from 1 to {_MAX_LIMIT}.")
    return int(value)


def _rid(request: Request) -> str:
    return request.scope.get(SCOPE_REQUEST_ID) or new_request_id()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dump_json(data), status_code=status, media_type=_JSON, headers=headers)


# -- the OpenAPI description of the job routes (dagserve/http/openapi.py adds it) ----------------------
JOB_REF = "#/components/schemas/dagserve.Job"


def job_schemas(error: dict[str, Any]) -> dict[str, Any]:
    """The components the job routes use; ``error``: the inner object of the error document."""
    times = {"type": ["number", "null"], "description": "Unix seconds."}
    return {
        "dagserve.JobAccepted": {
            "type": "object",
            "required": ["id", "status"],
            "properties": {"id": {"type": "string"}, "status": {"type": "string", "enum": list(STATUSES)}},
        },
        "dagserve.Job": {
            "type": "object",
            "required": ["id", "graph", "status", "attempts", "created", "started", "finished"],
            "properties": {
                "id": {"type": "string"},
                "graph": {"type": "string"},
                "status": {"type": "string", "enum": list(STATUSES)},
                "attempts": {"type": "integer", "minimum": 0},
                "created": {"type": "number", "description": "Unix seconds."},
                "started": times,
                "finished": times,
                "key": {"type": "string", "description": "The Idempotency-Key it was submitted with."},
                "result": {"description": "The graph's answer, as its route gives it (succeeded jobs)."},
                "error": error,
            },
        },
        "dagserve.JobList": {
            "type": "object",
            "required": ["jobs", "next"],
            "properties": {
                "jobs": {"type": "array", "items": {"$ref": JOB_REF}},
                "next": {"type": ["string", "null"], "description": "The `after` of the next page; null on the last."},
            },
        },
    }


def job_paths(
    graphs: dict[str, Any], single: bool, auth: bool, error_response: Callable[[str, str], dict[str, Any]]
) -> dict[str, Any]:
    """The job routes' path items: ``graphs`` maps each graph's name to its request body schema."""

    def responses(ok: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
        out = dict(ok)
        for status, text in errors.items():
            if status != "401" or auth:
                out[status] = error_response(text, status)
        return out

    def operation(op_id: str, summary: str, ok: dict[str, Any], errors: dict[str, str], **extra: Any) -> dict[str, Any]:
        op = {"operationId": op_id, "summary": summary, "tags": ["jobs"], "responses": responses(ok, errors), **extra}
        if auth:
            op["security"] = [{"bearerAuth": []}]
        return op

    def body(schema_ref: str, text: str) -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {"schema": {"$ref": schema_ref}}}}

    accepted = {
        "202": {**body("#/components/schemas/dagserve.JobAccepted", "Stored; fetch it at `Location`."),
                "headers": {"location": {"description": "The job's record.", "schema": {"type": "string"}}}},
        "200": body("#/components/schemas/dagserve.JobAccepted", "The first job submitted with this Idempotency-Key."),
    }
    submit_errors = dict(_SUBMIT_ERRORS)
    key_header = {"name": "idempotency-key", "in": "header", "required": False, "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                  "description": "A repeated key returns the first job instead of queueing another."}
    paths: dict[str, Any] = {}
    for name, request_schema in graphs.items():
        for route in (["/jobs"] if single else []) + [f"/{name}/jobs"]:
            paths[route] = {"post": operation(
                f"submit_{name}" + ("_root" if route == "/jobs" else ""), f"Queue a job of graph {name!r}", accepted,
                submit_errors, parameters=[key_header],
                requestBody={"required": True, "content": {"application/json": {"schema": request_schema}}},
            )}
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    one = {"200": body(JOB_REF, "The job: its result or error once finished.")}
    paths[JOBS_PATH + "/{job_id}"] = {
        "get": operation("get_job", "A job", one, {"401": _AUTH, "404": "No such job (or its result expired)."},
                         parameters=[job_id]),
        "delete": operation("cancel_job", "Cancel a job", one, {"401": _AUTH, "404": "No such job.",
                                                                "409": "The job finished already."}, parameters=[job_id]),
    }
    query = [
        {"name": "graph", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "status", "in": "query", "required": False, "schema": {"type": "string", "enum": list(STATUSES)}},
        {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_LIMIT}},
        {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    paths[JOBS_PATH] = {"get": operation(
        "list_jobs", "List jobs", {"200": body("#/components/schemas/dagserve.JobList", "A page of jobs, oldest first.")},
        {"400": "A bad limit or status.", "401": _AUTH}, parameters=query,
    )}
    return paths


_AUTH = "The bearer token is missing or wrong."
_SUBMIT_ERRORS = {
    "400": "The body is not acceptable JSON, or the idempotency key is too long.",
    "401": _AUTH,
    "408": "The request body did not arrive within the body deadline.",
    "413": "The request body is larger than the limit.",
    "415": "The content type is not application/json (UTF-8).",
    "422": "The payload failed the Input schema (`errors` lists each field); nothing was stored.",
    "503": "Too many requests at once; retry after `Retry-After` seconds.",
}
