"""The OpenAPI 3.1 description of the ingress, and the interactive page that shows it.

Each graph route gets its request schema from the graph Input's pydantic model (any JSON when it
has none), where a field that a switch without a default routes on, on every request, lists the
values it has cases for (``enum``), since any other value gets 422; and its response schema from
the output: the output template's structure (dicts,
lists, tuples) with, at each node, the JSON Schema of that node's return annotation
(``pydantic.TypeAdapter(...).json_schema()``); a switch or split gives ``anyOf`` its branches;
anything unannotated, or not describable by pydantic, is left open (``{}``). Every error status
the route can answer is listed with the one error schema.
"""

from __future__ import annotations

import copy
import enum
import html
import math
import re
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dagserve.compiler.plan import Plan, Ref, refs_in
from dagserve.http.bodies import InputShape
from dagserve.runtime.executor import refuses_unknown_fields
from dagserve.http.errors import error_schema
from dagserve.http.job_routes import job_paths, job_schemas
from dagserve.http.oip_rest import oip_openapi
from dagserve.http.stream_answers import stream_openapi
from dagserve.runtime.multiplex import MODEL_ID_HEADER

if TYPE_CHECKING:
    from dagserve.app import App

__all__ = ["ERROR_REF", "docs_page", "openapi_document"]

ERROR_REF = "#/components/schemas/dagserve.Error"
_REF_TEMPLATE = "#/components/schemas/{model}"
_ANY: dict[str, Any] = {}

# What each error status means on a graph route (the 401 only when a token is required).
_GRAPH_ERRORS = {
    "400": "The body is not acceptable JSON (malformed, empty, not UTF-8, NaN, duplicate keys, too deep) or "
    "not well-formed multipart/form-data.",
    "401": "The bearer token is missing or wrong.",
    "408": "The request body did not arrive within the body deadline.",
    "413": "The request body is larger than the limit (or a multipart body has too many parts or too large a field).",
    "415": "The content type is not one the graph takes: application/json (UTF-8); multipart/form-data or a raw "
    "file when its Input schema has a bytes or dagserve.File field.",
    "422": "The payload failed the Input schema (`errors` lists each field), or no switch case matched.",
    "500": "A node raised (`type` is the exception's type, `node` the node's name).",
    "503": "Overloaded or shutting down; retry after `Retry-After` seconds.",
    "504": "The request ran past its deadline (`node` names the node still running).",
}


def openapi_document(
    apps: Mapping[str, App],
    *,
    single: bool,
    auth: bool,
    root_path: str = "",
    title: str | None = None,
    described: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an ingress serving ``apps`` (name -> App); ``described``:
    the ``paths`` and ``schemas`` its doors add (the OpenAI routes)."""
    from dagserve._version import __version__

    schemas, components = _graph_schemas(apps)
    components["dagserve.Error"] = error_schema()
    components["dagserve.GraphList"] = _graph_list_schema()
    components["dagserve.Ready"] = _ready_schema()
    paths: dict[str, Any] = {}
    op_ids: set[str] = set()
    for name, app in apps.items():
        request_schema, response_schema, _ = schemas[name]
        routes = ["/", f"/{name}"] if single else [f"/{name}"]
        for route in routes:
            op_id = _operation_id(f"run_{name}" + ("_root" if route == "/" else ""), op_ids)
            operation = _graph_operation(name, app, op_id, request_schema, response_schema, auth, components)
            paths[route] = {"post": operation}
    if not single:
        paths["/"] = {"get": _listing_operation(auth)}
    paths["/-/healthz"] = {"get": _healthz_operation()}
    paths["/-/ready"] = {"get": _ready_operation()}
    components.update(job_schemas(components["dagserve.Error"]["properties"]["error"]))  # http/job_routes.py
    # A job's body is checked against the Input schema when it is submitted; which switch case it
    # takes is known only when it runs (a job whose value no case matches fails with 422 then).
    paths.update(job_paths({name: schemas[name][2] for name in apps}, single, auth, _error_response))
    oip_paths, oip_components = oip_openapi(dict(apps), auth=auth)  # /v2: the Open Inference Protocol
    paths.update(oip_paths)
    components.update(oip_components)
    if described:
        paths.update(described["paths"])
        components.update(described["schemas"])
    if title is None:
        title = f"dagserve: {next(iter(apps))}" if single else "dagserve"
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": __version__,
            "description": "Inference graphs served by dagserve. Every error answer has the shape "
            '`{"error": {"type", "message", "status", "node", "request_id"}}`.',
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    if root_path:
        doc["servers"] = [{"url": root_path}]
    if auth:
        doc["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    return doc


def docs_page(title: str, spec_url: str = "openapi.json") -> str:
    """An HTML page running Swagger UI on ``spec_url``, every file served by the ingress itself
    (``/-/static/``, :mod:`dagserve.http.assets`): no CDN, no inline script."""
    t = html.escape(title)
    u = html.escape(spec_url, quote=True)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t}</title>
<link rel="stylesheet" href="-/static/swagger-ui/swagger-ui.css">
<script src="-/static/swagger-ui/swagger-ui-bundle.js" defer></script>
<script src="-/static/docs.js" defer></script>
</head>
<body>
<div id="swagger-ui" data-spec-url="{u}"></div>
</body>
</html>
"""


# -- schemas from the plans -------------------------------------------------------------------


def _graph_schemas(apps: Mapping[str, App]) -> tuple[dict[str, tuple[Any, Any, Any]], dict[str, Any]]:
    """Per graph (request schema, response schema, the Input schema alone), and the shared
    component schemas (the request schema adds what switch cases accept)."""
    from pydantic import TypeAdapter

    adapters: dict[tuple[str, str], TypeAdapter[Any]] = {}
    shapes: dict[str, Any] = {}
    for name, app in apps.items():
        plan = app.plan
        if plan.input_schema is not None:
            adapters[(name, "input")] = TypeAdapter(plan.input_schema)
        shapes[name] = _shape(plan, plan.output, adapters)
    inputs = [(key, "validation" if key[1] == "input" else "serialization", ta) for key, ta in adapters.items()]
    try:
        mapping, top = TypeAdapter.json_schemas(inputs, ref_template=_REF_TEMPLATE)  # type: ignore[arg-type]
    except Exception:  # pragma: no cover - each adapter was checked alone; an odd mix leaves schemas open
        mapping, top = {}, {}
    resolved = {key: schema for (key, _mode), schema in mapping.items()}
    components = dict(top.get("$defs", {}))
    for name, app in apps.items():
        if refuses_unknown_fields(app.plan.input_schema):
            _close(resolved.get((name, "input")), components)
    out: dict[str, tuple[Any, Any, Any]] = {}
    for name, app in apps.items():
        plain = resolved.get((name, "input"), _ANY)
        out[name] = (_routed_fields(app.plan, plain, components), _render(shapes[name], resolved), plain)
    return out, components


def _close(schema: Any, components: dict[str, Any]) -> None:
    """``additionalProperties: false`` on a request schema (or the component it refers to): the
    graph refuses unknown fields (:func:`~dagserve.runtime.executor.refuses_unknown_fields`)."""
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if isinstance(ref, str) and ref.startswith(_REF_TEMPLATE.format(model="")):
        schema = components.get(ref.rsplit("/", 1)[1])
    if isinstance(schema, dict) and schema.get("type") == "object":
        schema["additionalProperties"] = False


def _routed_fields(plan: Plan, request_schema: Any, components: dict[str, Any]) -> Any:
    """``request_schema`` with an ``enum`` on each field a switch without a default routes on (see
    :func:`_accepted_values`), as a copy: the model's component may serve other graphs too."""
    accepted = _accepted_values(plan)
    if not accepted or plan.input_schema is None:
        return request_schema
    base = request_schema
    ref = base.get("$ref") if isinstance(base, dict) else None
    if isinstance(ref, str) and ref.startswith(_REF_TEMPLATE.format(model="")):
        base = components.get(ref.rsplit("/", 1)[1])
    if not isinstance(base, dict) or not isinstance(base.get("properties"), dict):
        return request_schema
    schema = copy.deepcopy(base)
    required: list[str] = list(schema.get("required", []))
    for name, values in accepted.items():
        field = plan.input_schema.model_fields.get(name)
        key = field.validation_alias or field.alias or name if field is not None else None
        if not isinstance(key, str) or key not in schema["properties"]:
            continue  # read through extra fields or a property: nothing in the schema to narrow
        prop = {k: v for k, v in schema["properties"][key].items() if k != "default"}
        prop["enum"] = values
        if not field.is_required():  # type: ignore[union-attr]
            default = field.get_default(call_default_factory=True)  # type: ignore[union-attr]
            if any(_same(default, v) for v in values):
                prop["default"] = schema["properties"][key]["default"]
            elif key not in required:
                required.append(key)  # absent means the default, which no case takes
        schema["properties"][key] = prop
    if required:
        schema["required"] = required
    return schema


def _accepted_values(plan: Plan) -> dict[str, list[Any]]:
    """Input field -> the JSON values accepted for it, from each switch without a default that runs
    on every request and routes on that field (several such switches: the values all accept).

    Switches inside another switch's or split's branch run only for some payloads, so they narrow
    nothing; keys that are not JSON scalars are not described either.
    """
    accepted: dict[str, list[Any]] = {}
    for index in _always_run(plan):
        step = plan.steps[index]
        if step.kind != "switch" or step.has_default:
            continue
        key_step = plan.steps[step.inputs[0]]
        if key_step.kind != "select" or plan.steps[key_step.inputs[0]].kind != "input":
            continue
        if not isinstance(key_step.key, str):
            continue
        values = [_json_scalar(case) for case, _ in step.cases]
        if any(v is _UNDESCRIBED for v in values):
            continue
        unique = [v for i, v in enumerate(values) if not any(_same(v, w) for w in values[:i])]
        before = accepted.get(key_step.key)
        if before is not None:
            unique = [v for v in before if any(_same(v, w) for w in unique)]
        accepted[key_step.key] = unique
    return {k: v for k, v in accepted.items() if v}


def _always_run(plan: Plan) -> set[int]:
    """Steps every request runs: from the output through every input, but only the key of a switch
    or split (their branches run for some payloads)."""
    todo = refs_in(plan.output)
    seen: set[int] = set()
    while todo:
        index = todo.pop()
        if index in seen:
            continue
        seen.add(index)
        step = plan.steps[index]
        if step.kind == "switch":
            todo.append(step.inputs[0])
        elif step.kind == "split":
            if isinstance(step.key, Ref):
                todo.append(step.key.index)
        else:
            todo.extend(step.inputs)
    return seen


_UNDESCRIBED = object()


def _json_scalar(value: Any) -> Any:
    """``value`` as the JSON scalar a payload holds for it (an Enum member's value), or _UNDESCRIBED."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return _UNDESCRIBED


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0`` but ``True != 1``."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _shape(plan: Plan, template: Any, adapters: dict[tuple[str, str], Any]) -> Any:
    """The output's structure, with ("adapter", key) where a TypeAdapter describes a value."""
    if isinstance(template, Ref):
        return _step_shape(plan, template.index, adapters)
    if isinstance(template, dict):
        return ("object", {k: _shape(plan, v, adapters) for k, v in template.items()})
    if isinstance(template, (list, tuple)):
        return ("array", [_shape(plan, v, adapters) for v in template])
    return ("const", template)


def _step_shape(plan: Plan, index: int, adapters: dict[tuple[str, str], Any]) -> Any:
    step = plan.steps[index]
    if step.kind == "input":
        if plan.input_schema is None:
            return ("any",)
        key = (plan.graph_name, "input-out")
        adapter = _adapter(plan.input_schema)
        if adapter is None:
            return ("any",)
        adapters[key] = adapter
        return ("adapter", key)
    if step.kind == "call":
        ann = step.returns
        if ann is None or ann is typing.Any:
            return ("any",)
        key = (plan.graph_name, f"step-{index}")
        adapter = _adapter(ann)
        if adapter is None:
            return ("any",)
        adapters[key] = adapter
        return ("adapter", key)
    if step.kind in ("switch", "split"):
        branches = [t for _, t in step.cases]
        if step.kind == "switch" and step.has_default:
            branches.append(step.default)
        return ("anyOf", [_shape(plan, b, adapters) for b in branches])
    return ("any",)  # select: a part of something; not worth guessing


def _adapter(annotation: Any) -> Any:
    """A TypeAdapter that can describe ``annotation`` as JSON Schema, or ``None``."""
    from pydantic import TypeAdapter

    try:
        adapter = TypeAdapter(annotation)
        adapter.json_schema(mode="serialization")
    except Exception:  # arbitrary classes (numpy arrays, user objects): leave the schema open
        return None
    return adapter


def _render(shape: Any, resolved: dict[tuple[str, str], Any]) -> Any:
    kind = shape[0]
    if kind == "adapter":
        return resolved.get(shape[1], _ANY)
    if kind == "object":
        props = {str(k): _render(v, resolved) for k, v in shape[1].items() if _plain_key(k)}
        if len(props) != len(shape[1]):
            return {"type": "object"}
        return {"type": "object", "properties": props, "required": sorted(props)}
    if kind == "array":
        items = [_render(v, resolved) for v in shape[1]]
        return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
    if kind == "const":
        value = shape[1]
        if value is None or isinstance(value, (bool, int, str)):
            return {"const": value}
        return _ANY
    if kind == "anyOf":
        options: list[Any] = []
        for s in shape[1]:
            r = _render(s, resolved)
            if r == _ANY:
                return _ANY
            if r not in options:
                options.append(r)
        return options[0] if len(options) == 1 else {"anyOf": options}
    return _ANY


def _plain_key(key: Any) -> bool:
    """Keys that JSON writes as ``str(key)``."""
    return isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool))


# -- operations ---------------------------------------------------------------------------------

_REQUEST_ID_HEADER = {
    "x-request-id": {
        "description": "The request's id (the client's when it sent a sane one, else generated).",
        "schema": {"type": "string"},
    }
}


def _error_response(description: str, status: str) -> dict[str, Any]:
    headers = dict(_REQUEST_ID_HEADER)
    if status == "503":
        headers["retry-after"] = {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
    if status == "401":
        headers["www-authenticate"] = {"description": "The scheme to use: Bearer.", "schema": {"type": "string"}}
    return {
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
    }


def _graph_operation(
    name: str, app: App, op_id: str, request_schema: Any, response_schema: Any, auth: bool, components: dict[str, Any]
) -> dict[str, Any]:
    description = app.graph.description or f"Runs the graph {name!r} on the JSON payload and returns its output."
    responses: dict[str, Any] = {
        "200": {
            "description": "The graph's output.",
            "headers": dict(_REQUEST_ID_HEADER),
            "content": {"application/json": {"schema": response_schema}},
        }
    }
    if app.streams:
        responses["200"].update(stream_openapi(response_schema))
    for status, text in _GRAPH_ERRORS.items():
        if status == "401" and not auth:
            continue
        responses[status] = _error_response(text, status)
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": f"Run graph {name!r}",
        "description": description,
        "tags": ["graphs"],
        "requestBody": {"required": True, "content": {"application/json": {"schema": request_schema}}},
        "responses": responses,
    }
    if any(s.model_id is not None for s in app.plan.steps):  # multiplexed (docs/multiplexing.md)
        op["parameters"] = [_MODEL_ID_PARAMETER]
    _binary_bodies(op, app, request_schema, components)
    if auth:
        op["security"] = [{"bearerAuth": []}]
    return op


_MODEL_ID_PARAMETER = {
    "name": MODEL_ID_HEADER,
    "in": "header",
    "required": False,
    "description": "The model id of the graph's multiplexed node when the payload lacks the field it reads (the "
    "payload wins): a non-empty string of at most 256 printable characters.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
}


_BINARY: dict[str, Any] = {"type": "string", "format": "binary"}


def _binary_bodies(op: dict[str, Any], app: App, request_schema: Any, components: dict[str, Any]) -> None:
    """Describe on ``op`` what http/bodies.py takes beyond JSON, and a bytes or File answer."""
    ok = op["responses"]["200"]
    if ok["content"]["application/json"]["schema"].get("format") == "binary" and not app.streams:
        ok["content"] = {"*/*": {"schema": _BINARY}}  # bytes answer as themselves, typed by the graph
        ok["description"] = "The graph's output: its bytes, with the media type (and file name) it gave them."
    ref = request_schema.get("$ref", "") if isinstance(request_schema, dict) else ""
    model = components.get(ref.rsplit("/", 1)[-1]) if ref.startswith("#/components/schemas/") else None
    shape = InputShape(app.plan.input_schema)
    if not shape.binary or model is None:
        return
    properties = dict(model.get("properties", {}))
    for name in shape.binary:  # JSON carries them as base64 text
        prop = properties.get(name, {})
        if prop.get("type") == "string":
            prop["contentEncoding"] = "base64"
    form = {
        "type": "object",
        "properties": {
            name: ({"type": "array", "items": _BINARY} if shape.fields[name].many else _BINARY)
            if name in shape.binary
            else prop
            for name, prop in properties.items()
        },
        "required": model.get("required", []),
    }
    if not shape.extra:
        form["additionalProperties"] = False  # unknown parts are refused (422), as the docs say
    content = op["requestBody"]["content"]
    content["multipart/form-data"] = {"schema": form}
    if len(shape.binary) == 1:
        content["application/octet-stream"] = {"schema": _BINARY}
        content["image/*"] = {"schema": _BINARY}
        # The query string fills the other fields only with a raw body, which OpenAPI cannot say of
        # a parameter: the description says it (parameters would read as valid with JSON too).
        others = [name for name in properties if name not in shape.binary]
        op["description"] += (
            f" A raw body of any media type other than JSON fills the field {shape.binary[0]!r}"
            + (f"; the other fields ({', '.join(others)}) then come from the query string." if others else ".")
        )


def _listing_operation(auth: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": "The graphs served here and their routes.",
            "headers": dict(_REQUEST_ID_HEADER),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/dagserve.GraphList"}}},
        }
    }
    op: dict[str, Any] = {"operationId": "list_graphs", "summary": "List the graphs", "tags": ["graphs"]}
    if auth:
        responses["401"] = _error_response(_GRAPH_ERRORS["401"], "401")
        op["security"] = [{"bearerAuth": []}]
    op["responses"] = responses
    return op


def _healthz_operation() -> dict[str, Any]:
    return {
        "operationId": "healthz",
        "summary": "Liveness: the process answers",
        "tags": ["health"],
        "responses": {
            "200": {
                "description": "Alive.",
                "headers": dict(_REQUEST_ID_HEADER),
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        }
                    }
                },
            }
        },
    }


def _ready_operation() -> dict[str, Any]:
    return {
        "operationId": "ready",
        "summary": "Readiness: every node of every graph runs a replica (replicas still pending are listed)",
        "tags": ["health"],
        "responses": {
            "200": {
                "description": "Ready.",
                "headers": dict(_REQUEST_ID_HEADER),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/dagserve.Ready"}}},
            },
            "503": _error_response("Not ready (a node has no running replica yet, or shutting down).", "503"),
        },
    }


def _graph_list_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["graphs"],
        "properties": {
            "graphs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "path"],
                    "properties": {
                        "name": {"type": "string"},
                        "path": {"type": "string"},
                        "description": {"type": ["string", "null"]},
                    },
                },
            }
        },
    }


def _ready_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["ready", "graphs"],
        "properties": {
            "ready": {"type": "boolean"},
            "graphs": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "pending": {
                "type": "object",
                "description": "Per graph, the nodes short of their target replicas: running, target, "
                "pending replicas and why they wait.",
                "additionalProperties": {"type": "object", "additionalProperties": {"type": "object"}},
            },
        },
    }


def _operation_id(wanted: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", wanted)
    op_id, n = base, 2
    while op_id in taken:
        op_id, n = f"{base}_{n}", n + 1
    taken.add(op_id)
    return op_id
