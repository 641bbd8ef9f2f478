"""The Open Inference Protocol over gRPC: KServe's ``inference.GRPCInferenceService``.

Served next to the HTTP ingress, on the same event loop and in the same process
(``dagserve run --grpc-port``, ``dagserve.serve(grpc_port=...)``), with the ingress's rules:

* the same token, as ``authorization: Bearer <token>`` metadata (``ServerLive`` and
  ``ServerReady`` need none, like ``/-/healthz``);
* the same admission (``max_in_flight``, ``UNAVAILABLE`` beyond), the same largest body
  (``max_body_bytes`` is the largest message), the client's deadline as the request's timeout
  (``DEADLINE_EXCEEDED``), a cancelled call cancels the graph's work;
* the request id from ``x-request-id`` metadata (answered in the trailing metadata) and the
  trace from ``traceparent``;
* errors as status codes: ``INVALID_ARGUMENT`` (bad tensors), ``NOT_FOUND`` (unknown model),
  ``UNAUTHENTICATED``, ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INTERNAL`` (a node failed: named).

``ModelInfer`` runs a graph once; ``ModelStreamInfer`` takes a stream of requests and answers a
streaming graph with one response per item (as Triton's decoupled models answer
``tritonclient.grpc``'s ``start_stream`` / ``async_stream_infer``), other graphs with one
response per request; a request's failure is an ``error_message`` in the stream, which goes on.
Tensors are read and written by :mod:`dagserve.oip` (the same codec as the REST routes).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from starlette.concurrency import run_in_threadpool

from dagserve._errors import DagserveError, TensorError
from dagserve.http.errors import error_from_exception
from dagserve.http.ingress import Ingress
from dagserve.http.oip_rest import MODEL_VERSION, find_model, is_ready, model_metadata, server_metadata, streaming_model
from dagserve.oip import grpc_predict_v2_pb2 as pb
from dagserve.oip.codec import datatype_of, from_raw, from_values, to_raw
from dagserve.oip.model import ModelSignature, signature
from dagserve.observe.traceparent import request_trace
from dagserve.runtime.executor import RequestContext
from dagserve.runtime.request_id import new_request_id, sane_request_id

if TYPE_CHECKING:
    from dagserve.app import App

__all__ = ["GrpcServer", "grpc_code"]

logger = logging.getLogger("dagserve.grpc")

SERVICE = "inference.GRPCInferenceService"
#: Messages up to this size are decoded on the event loop; larger ones on a worker thread.
_DECODE_INLINE_BYTES = 64 * 1024

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Which InferTensorContents field holds each datatype's values (FP16 travels only as raw bytes).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC status code for an HTTP status."""
    return _CODES.get(status, grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.INVALID_ARGUMENT)


class GrpcServer:
    """The gRPC server beside an ingress: ``await start(ingress)`` on the serving loop, then
    ``await stop(grace_s)``. ``port`` is the bound port once started (``0`` picks a free one)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._server: grpc.aio.Server | None = None

    async def start(self, ingress: Ingress) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", ingress.config.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a taken port is an error, not a shared one
            ]
        )
        server.add_generic_rpc_handlers((_Service(ingress).handler(),))
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            bound = server.add_insecure_port(f"{host}:{self.port}")
        except RuntimeError as exc:
            bound = 0
            reason = f": {exc}"
        else:
            reason = ""
        if not bound:
            raise DagserveError(f"The gRPC server could not listen on {self.host}:{self.port} (is the port in use?){reason}.")
        self.port = bound
        await server.start()
        self._server = server
        logger.info("serving the Open Inference Protocol over gRPC at %s:%d", self.host, bound)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let calls in flight finish for up to ``grace_s``, then cancel them."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None


class _Service:
    """The RPCs, each with the ingress's token, admission, deadlines and error mapping."""

    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress
        self._signatures: dict[str, tuple[Any, ModelSignature]] = {}

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any, request: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request.FromString, response_serializer=_serialize
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
                "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
                "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
                "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
                "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
                "ModelInfer": unary(self.model_infer, pb.ModelInferRequest),
                "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                    self.model_stream_infer,
                    request_deserializer=pb.ModelInferRequest.FromString,
                    response_serializer=_serialize,
                ),
            },
        )

    # -- health and metadata -------------------------------------------------------------------
    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ready = not self.ingress.draining and all([await is_ready(app) for app in self.ingress.apps.values()])
        return pb.ServerReadyResponse(ready=ready)

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        app = await self._guard(context, lambda: self._model(context, request.name, request.version))
        return pb.ModelReadyResponse(ready=not self.ingress.draining and await is_ready(app))

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._guard(context, lambda: self._authorize(context))
        return pb.ServerMetadataResponse(**server_metadata())

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        app = await self._guard(context, lambda: self._model(context, request.name, request.version))
        meta = model_metadata(app)
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensors(**t) for t in meta["inputs"]],
            outputs=[tensors(**t) for t in meta["outputs"]],
        )

    # -- inference -----------------------------------------------------------------------------
    async def model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        rid, trace = _identity(context, request.id)
        admitted = False
        try:
            app = self._model(context, request.model_name, request.model_version)
            if app.streams:
                raise streaming_model(app.name, "ModelInfer")
            self.ingress._admit()
            admitted = True
            sig, payload, wanted = await self._decode(app, request)
            ctx = RequestContext(request_id=rid, trace=trace, protocol="grpc")
            result = await app.acall(payload, context=ctx, timeout_s=_timeout(app, context))
            return _answer(app, sig, request.id, result, wanted)
        except Exception as exc:
            await self._abort(context, exc, rid)
        finally:
            if admitted:
                self.ingress._release()

    async def model_stream_infer(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            self._authorize(context)
        except Exception as exc:
            await self._abort(context, exc, new_request_id())
        async for request in requests:
            rid, trace = _identity(context, request.id)
            admitted = False
            try:
                app = self._model(context, request.model_name, request.model_version, authorized=True)
                self.ingress._admit()
                admitted = True
                sig, payload, wanted = await self._decode(app, request)
                ctx = RequestContext(request_id=rid, trace=trace, protocol="grpc")
                # Closed at once when the call ends early (the client cancels): the graph's stream stops.
                items = app.astream(payload, context=ctx, timeout_s=_timeout(app, context))
                async with contextlib.aclosing(items):  # type: ignore[type-var]
                    async for item in items:
                        yield pb.ModelStreamInferResponse(infer_response=_answer(app, sig, request.id, item, wanted))
            except Exception as exc:
                status, message = self._failure(exc, rid)
                yield pb.ModelStreamInferResponse(
                    error_message=message, infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id)
                )
            finally:
                if admitted:
                    self.ingress._release()

    async def _decode(self, app: App, request: Any) -> tuple[ModelSignature, Any, list[str] | None]:
        sig = self._signature(app)
        if request.ByteSize() <= _DECODE_INLINE_BYTES:
            payload = sig.payload(_tensors(request))
        else:  # on a worker thread, so that the event loop keeps serving meanwhile
            payload = sig.payload(await run_in_threadpool(_tensors, request))
        wanted = [o.name for o in request.outputs] or None
        return sig, payload, wanted

    def _signature(self, app: App) -> ModelSignature:
        cached = self._signatures.get(app.name)
        if cached is None or cached[0] is not app.plan:
            cached = self._signatures[app.name] = (app.plan, signature(app.plan))
        return cached[1]

    # -- rules shared with the ingress -----------------------------------------------------------
    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        header = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        self.ingress.check_token(header if isinstance(header, str) else None)

    def _model(self, context: grpc.aio.ServicerContext, name: str, version: str, *, authorized: bool = False) -> App:
        if not authorized:
            self._authorize(context)
        return find_model(self.ingress.apps, name, version or None)

    async def _guard(self, context: grpc.aio.ServicerContext, check: Any) -> Any:
        try:
            return check()
        except Exception as exc:
            await self._abort(context, exc, new_request_id())

    def _failure(self, exc: BaseException, rid: str) -> tuple[int, str]:
        status, body, _ = error_from_exception(exc, request_id=rid, debug=self.ingress.config.debug, shape="oip")
        self.ingress.log_failure(exc, status, rid)
        return status, body["error"]

    async def _abort(self, context: grpc.aio.ServicerContext, exc: BaseException, rid: str) -> None:
        status, message = self._failure(exc, rid)
        context.set_trailing_metadata((("x-request-id", rid),))
        await context.abort(grpc_code(status), message)


def _timeout(app: App, context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as the request's timeout, never past the graph's own (``None``: its own)."""
    left = context.time_remaining()
    limit = app.request_timeout_s
    if left is None or (limit is not None and left >= limit):
        return None
    return max(left, 0.0)


def _identity(context: grpc.aio.ServicerContext, request_id: str) -> tuple[str, Any]:
    """The request id (``x-request-id`` metadata, else the request's ``id`` if sane, else new) and trace."""
    given = parent = None
    state: list[str] = []
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and given is None:
            given = value
        elif key == "traceparent":
            parent = value
        elif key == "tracestate":
            state.append(value)
    rid = sane_request_id(given) or sane_request_id(request_id or None) or new_request_id()
    return rid, request_trace(parent, state)


def _tensors(request: Any) -> list[tuple[str, str, Any]]:
    """``(name, datatype, array)`` per input tensor of a ``ModelInferRequest``."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorError(
            f"The request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents; send one per input, "
            "or none and the values in each input's contents."
        )
    out = []
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if raw:
            array = from_raw(name, datatype, shape, raw[i])
        else:
            field = _CONTENTS.get(datatype)
            if field is None:
                raise TensorError(
                    f"Input {name!r} has datatype {datatype!r}, which has no contents field; send it in raw_input_contents.",
                    input=name,
                )
            array = from_values(name, datatype, shape, list(getattr(tensor.contents, field)))
        out.append((name, datatype, array))
    return out


def _answer(app: App, sig: ModelSignature, request_id: str, result: Any, wanted: list[str] | None) -> Any:
    response = pb.ModelInferResponse(model_name=app.name, model_version=MODEL_VERSION, id=request_id)
    for name, array in sig.outputs_of(result, wanted):
        response.outputs.add(name=name, datatype=datatype_of(array) or "BYTES", shape=list(array.shape))
        response.raw_output_contents.append(to_raw(array))
    return response


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]

