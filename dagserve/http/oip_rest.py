"""The Open Inference Protocol (KServe "V2") over REST: each graph a model named as the graph.

::

    GET  /v2/health/live                 the server answers            (no token)
    GET  /v2/health/ready                every graph is ready (503 not) (no token)
    GET  /v2                             server metadata
    GET  /v2/models/<graph>              model metadata: input and output tensors
    GET  /v2/models/<graph>/ready        the graph is ready (503 not)
    POST /v2/models/<graph>/infer        run the graph on tensors
    (the model routes also under /v2/models/<graph>/versions/<version>; the one version is "1")

Infer requests and answers are JSON, or JSON followed by binary tensor data (the binary tensor
data extension: ``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data`` and
``binary_data_output``), as ``tritonclient.http`` sends and reads them by default. An infer
body may come without a Content-Type (tritonclient sends none) but then not from a browser page
of another origin (http/origin.py). Every error answers ``{"error": "<message>"}``. The
tensors' codec and the graph's signature are in :mod:`dagserve.oip`; the request itself runs
through the ingress like any graph request (:meth:`Ingress.run_graph`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dagserve._errors import RequestError, TensorError
from dagserve._version import __version__
from dagserve.http.doors import JSON, Door
from dagserve.http.errors import HTTPError
from dagserve.http.jsonio import dump_json, parse_json
from dagserve.http.origin import check_same_origin
from dagserve.oip.codec import HEADER_LENGTH, datatype_of, from_raw, from_values, split_binary, take_binary, to_raw, to_values
from dagserve.oip.model import ModelSignature, signature

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.types import Scope

    from dagserve.app import App

__all__ = [
    "MODEL_VERSION",
    "SERVER_EXTENSIONS",
    "find_model",
    "is_ready",
    "model_metadata",
    "oip_openapi",
    "oip_routes",
    "server_metadata",
    "streaming_model",
]

#: A graph has one version as a model.
MODEL_VERSION = "1"
#: The protocol extensions served.
SERVER_EXTENSIONS = ("binary_tensor_data",)
_HEADER = HEADER_LENGTH.encode()
_OCTETS = "application/octet-stream"


def server_metadata() -> dict[str, Any]:
    return {"name": "dagserve", "version": __version__, "extensions": list(SERVER_EXTENSIONS)}


def model_metadata(app: App) -> dict[str, Any]:
    sig = signature(app.plan)
    return {
        "name": app.name,
        "versions": [MODEL_VERSION],
        "platform": "dagserve",
        "inputs": [f.metadata() for f in (sig.inputs or {}).values()],
        "outputs": [f.metadata() for f in sig.outputs],
    }


def find_model(apps: dict[str, App], name: str, version: str | None) -> App:
    """The App serving model ``name``, or a 404 naming the models (and the one version)."""
    app = apps.get(name)
    if app is None:
        raise HTTPError(404, f"There is no model {name!r}; the models are {sorted(apps)}.", error_type="ModelNotFound")
    if version not in (None, "", MODEL_VERSION):
        raise HTTPError(
            404, f"Model {name!r} has no version {version!r}; its one version is {MODEL_VERSION!r}.", error_type="ModelNotFound"
        )
    return app


async def is_ready(app: App) -> bool:
    try:
        return bool((await run_in_threadpool(app.status)).ready)
    except Exception:  # a closed App or an unreachable backend is simply not ready
        return False


def oip_routes(
    apps: dict[str, App],
    authorize: Callable[[Request], None],
    run_graph: Callable[[Request, App, Door], Awaitable[Response]],
    draining: Callable[[], bool],
) -> list[BaseRoute]:
    """The /v2 routes of an ingress serving ``apps``: ``authorize`` checks a request's token,
    ``run_graph`` runs one graph request through a door, ``draining()`` says the server stops."""
    doors: dict[str, Door] = {}

    def door_of(app: App) -> Door:
        door = doors.get(app.name)
        if door is None:
            door = doors[app.name] = infer_door(app)
        return door

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        waiting = [name for name, app in apps.items() if draining() or not await is_ready(app)]
        if waiting:
            raise HTTPError(503, f"Not ready: {', '.join(waiting)} (a deployment is starting, scaling or unhealthy).",
                            error_type="NotReady", headers={"retry-after": "5"})
        return _json({"ready": True})

    async def server(request: Request) -> Response:
        authorize(request)
        return _json(server_metadata())

    def model(request: Request) -> App:
        authorize(request)
        params = request.path_params
        return find_model(apps, params["graph"], params.get("version"))

    async def metadata(request: Request) -> Response:
        return _json(model_metadata(model(request)))

    async def model_ready(request: Request) -> Response:
        app = model(request)
        if draining() or not await is_ready(app):
            raise HTTPError(503, f"Model {app.name!r} is not ready.", error_type="NotReady", headers={"retry-after": "5"})
        return _json({"name": app.name, "ready": True})

    async def infer(request: Request) -> Response:
        params = request.path_params
        try:
            app = find_model(apps, params["graph"], params.get("version"))
        except HTTPError:
            authorize(request)  # a caller without the token learns nothing of the models
            raise
        return await run_graph(request, app, door_of(app))

    routes: list[BaseRoute] = [
        Route("/v2/health/live", live, methods=["GET"], name="oip_live"),
        Route("/v2/health/ready", ready, methods=["GET"], name="oip_ready"),
        Route("/v2", server, methods=["GET"], name="oip_server"),
    ]
    for base in ("/v2/models/{graph}", "/v2/models/{graph}/versions/{version}"):
        routes += [
            Route(base, metadata, methods=["GET"]),
            Route(base + "/ready", model_ready, methods=["GET"]),
            Route(base + "/infer", infer, methods=["POST"]),
        ]
    return routes


def streaming_model(name: str, door: str) -> RequestError:
    """The refusal of a one-answer infer on a streaming graph."""
    return RequestError(
        f"Model {name!r} streams its answer, which {door} cannot carry; call it over gRPC (ModelStreamInfer), "
        "or through its JSON route."
    )


def infer_door(app: App) -> Door:
    """How the infer route of ``app`` reads tensors and writes them (see :class:`Door`)."""
    sig = signature(app.plan)
    streams = app.streams

    def decode(body: bytes, scope: Scope, max_depth: int) -> tuple[Any, Any]:
        if streams:
            raise streaming_model(app.name, "OIP's REST infer")
        header, binary = split_binary(body, _header(scope))
        doc = parse_json(header, max_depth=max_depth)
        return request_payload(sig, doc, binary)

    def encode(result: Any, state: Any) -> tuple[bytes, str, dict[str, str] | None]:
        return answer(app.name, sig, result, state)

    return Door(protocol="oip", shape="oip", check=_check_type, decode=decode, encode=encode)


def request_payload(sig: ModelSignature, doc: Any, binary: memoryview) -> tuple[dict[str, Any], Any]:
    """The payload of an infer request's JSON ``doc`` (and its ``binary`` part), and what the
    answer needs of the request: its id, the outputs asked for, which of them in binary."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise TensorError('An infer request is a JSON object with "inputs": a list of tensors.')
    if not isinstance(doc.get("id", ""), str) or not isinstance(doc.get("parameters", {}), dict):
        raise TensorError('An infer request\'s "id" is a string and its "parameters" an object.')
    tensors = []
    at = 0
    for entry in doc["inputs"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("parameters", {}), dict):
            raise TensorError('Each of "inputs" is an object with a "name", a "datatype", a "shape" and "data" '
                              '(or "parameters": {"binary_data_size": N}).')
        name = entry["name"]
        size = _params(entry).get("binary_data_size")
        if size is not None:
            raw, at = take_binary(name, binary, at, size)
            array = from_raw(name, entry.get("datatype"), entry.get("shape"), raw)
        elif "data" in entry:
            array = from_values(name, entry.get("datatype"), entry.get("shape"), entry["data"])
        else:
            raise TensorError(f'Input {name!r} has no "data" and no binary_data_size parameter.', input=name)
        tensors.append((name, entry.get("datatype"), array))
    if at != len(binary):
        raise TensorError(f"The body holds {len(binary) - at} bytes of binary data that no input claims.")
    binary_default = bool(_params(doc).get("binary_data_output", False))
    wanted: dict[str, bool] | None = None
    if "outputs" in doc:
        if not isinstance(doc["outputs"], list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("parameters", {}), dict)
            for o in doc["outputs"]
        ):
            raise TensorError('"outputs" is a list of objects, each with a "name".')
        wanted = {o["name"]: bool(_params(o).get("binary_data", binary_default)) for o in doc["outputs"]} or None
    return sig.payload(tensors), (doc.get("id"), wanted, binary_default)


def answer(model: str, sig: ModelSignature, result: Any, state: Any) -> tuple[bytes, str, dict[str, str] | None]:
    """The infer answer's body, media type and headers for the graph's ``result``."""
    request_id, wanted, binary_default = state
    outputs = []
    chunks: list[bytes] = []
    for name, array in sig.outputs_of(result, None if wanted is None else list(wanted)):
        tensor: dict[str, Any] = {"name": name, "datatype": _datatype(array), "shape": list(array.shape)}
        if (wanted or {}).get(name, binary_default):
            raw = to_raw(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = to_values(name, array)
        outputs.append(tensor)
    doc: dict[str, Any] = {"model_name": model, "model_version": MODEL_VERSION, "outputs": outputs}
    if request_id is not None:
        doc["id"] = request_id
    header = dump_json(doc)
    if not chunks:
        return header, JSON, None
    return b"".join([header, *chunks]), _OCTETS, {HEADER_LENGTH: str(len(header))}


def _datatype(array: Any) -> str:
    return datatype_of(array) or "BYTES"


def _params(obj: dict[str, Any]) -> dict[str, Any]:
    params = obj.get("parameters")
    return params if isinstance(params, dict) else {}


def _header(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == _HEADER:
            return value.decode("latin-1")
    return None


def _check_type(scope: Scope, content_type: str | None) -> None:
    """A JSON or binary body; one without a type only from no browser page of another origin."""
    if content_type is None:
        check_same_origin(scope)
        return
    media = content_type.partition(";")[0].strip().lower()
    if media not in (JSON, _OCTETS):
        raise HTTPError(415, f"The content type is {media!r}; an infer request is application/json (or "
                        "application/octet-stream with the binary tensor data extension).")
    check_same_origin(scope)


def _json(data: Any) -> Response:
    return Response(dump_json(data), media_type=JSON)


# -- OpenAPI ---------------------------------------------------------------------------------------

_OIP_ERROR = {"$ref": "#/components/schemas/oip.Error"}


def oip_openapi(apps: dict[str, App], *, auth: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The /v2 routes' OpenAPI paths and component schemas (merged into the ingress's document)."""
    from dagserve.graph.tensors import DATATYPES

    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": list(DATATYPES)},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "data": {"description": "The values, flat or nested row-major (BYTES: strings); absent when in binary."},
            "parameters": {"type": "object", "description": "binary_data_size: bytes of this tensor after the JSON."},
        },
    }
    components = {
        "oip.Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "oip.Tensor": tensor,
        "oip.InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object", "description": "binary_data_output: every output in binary."},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/oip.Tensor"}},
                "outputs": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name"],
                              "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}},
                },
            },
        },
        "oip.InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/oip.Tensor"}},
            },
        },
    }
    security = [{"bearerAuth": []}] if auth else None
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": _op("oip_live", "Liveness (Open Inference Protocol).", {"live": {"type": "boolean"}})},
        "/v2/health/ready": {"get": _op("oip_ready", "Readiness of every model.", {"ready": {"type": "boolean"}})},
        "/v2": {"get": _op("oip_server", "Server metadata.", {"name": {"type": "string"}}, security)},
    }
    for name, app in apps.items():
        inputs = ", ".join(f"`{t['name']}` {t['datatype']} {t['shape']}" for t in model_metadata(app)["inputs"]) or "any"
        infer = _op(
            f"oip_infer_{name}",
            f"Run graph {name!r} on tensors (inputs: {inputs}). JSON, or JSON then binary tensor data "
            "(Inference-Header-Content-Length).",
            None,
            security,
        )
        infer["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/oip.InferRequest"}},
                _OCTETS: {"schema": {"type": "string", "format": "binary"}},
            },
        }
        infer["responses"]["200"]["content"] = {
            "application/json": {"schema": {"$ref": "#/components/schemas/oip.InferResponse"}},
            _OCTETS: {"schema": {"type": "string", "format": "binary"}},
        }
        for status, why in (("400", "A tensor is unknown, missing or of the wrong datatype or shape."),
                            ("404", "No such model."), ("500", "A node raised (named)."),
                            ("503", "Overloaded; retry."), ("504", "Past the deadline.")):
            infer["responses"][status] = {"description": why, "content": {"application/json": {"schema": _OIP_ERROR}}}
        base = f"/v2/models/{name}"
        paths[base] = {"get": _op(f"oip_model_{name}", f"Model metadata of {name!r}.", {"inputs": {"type": "array"}}, security)}
        paths[base + "/ready"] = {"get": _op(f"oip_model_ready_{name}", f"Is {name!r} ready?", {"ready": {"type": "boolean"}}, security)}
        paths[base + "/infer"] = {"post": infer}
    return paths, components


def _op(op_id: str, summary: str, props: dict[str, Any] | None, security: list[Any] | None = None) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if props is not None:
        ok["content"] = {"application/json": {"schema": {"type": "object", "properties": props}}}
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": ["Open Inference Protocol"],
        "responses": {"200": ok, "503": {"description": "Not ready.", "content": {"application/json": {"schema": _OIP_ERROR}}}},
    }
    if security:
        op["security"] = security
        op["responses"]["401"] = {"description": "The bearer token is missing or wrong.",
                                  "content": {"application/json": {"schema": _OIP_ERROR}}}
    return op
