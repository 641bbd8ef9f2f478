"""The gRPC server (dagserve/http/grpc_server.py) with grpcio's own client on 127.0.0.1: the
ingress's rules over gRPC (token, admission, message size, deadline, cancellation, request ids,
trace context), values sent in ``contents``, and a stream that goes on after a failure.
tritonclient's view of the same server is in test_oip_clients.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import dagserve
from dagserve.http.grpc_server import GrpcServer
from dagserve.oip import grpc_predict_v2_pb2 as pb
from tests import oip_graphs as og
from tests.background_server import BackgroundServer

pytestmark = pytest.mark.http
AUTH = (("authorization", "Bearer tok"),)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[grpc.Channel, dict[str, dagserve.App]]]:
    apps = {g.name: dagserve.deploy(g, backend="local", request_timeout_s=20) for g in og.ALL}
    server = GrpcServer("127.0.0.1", 0)
    web = dagserve.asgi_app(list(apps.values()), token="tok", max_body_bytes=64 * 1024, max_in_flight=2)
    with BackgroundServer(web, companions=[server]), grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel, apps
    for app in apps.values():
        app.shutdown()


def rpc(channel: grpc.Channel, method: str, response: Any) -> Any:
    request = pb.ModelInferRequest if "Infer" in method else getattr(pb, f"{method}Request")
    return channel.unary_unary(
        f"/inference.GRPCInferenceService/{method}",
        request_serializer=request.SerializeToString,
        response_deserializer=response.FromString,
    )


def count_request(n: int, word: str = "w", model: str = "sleepy") -> Any:
    req = pb.ModelInferRequest(model_name=model, id="my-id")
    req.inputs.add(name="n", datatype="INT64", shape=[1]).contents.int64_contents.append(n)
    req.inputs.add(name="word", datatype="BYTES", shape=[1]).contents.bytes_contents.append(word.encode())
    return req


def wait_for(condition: Any, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.05)


def test_health_needs_no_token_metadata_does(served: tuple[grpc.Channel, Any]) -> None:
    channel, _ = served
    assert rpc(channel, "ServerLive", pb.ServerLiveResponse)(pb.ServerLiveRequest()).live is True
    assert rpc(channel, "ServerReady", pb.ServerReadyResponse)(pb.ServerReadyRequest()).ready is True
    with pytest.raises(grpc.RpcError) as info:
        rpc(channel, "ModelMetadata", pb.ModelMetadataResponse)(pb.ModelMetadataRequest(name="tensors"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    meta = rpc(channel, "ModelMetadata", pb.ModelMetadataResponse)(pb.ModelMetadataRequest(name="tensors"), metadata=AUTH)
    assert [t.name for t in meta.inputs] == ["pixels", "name", "scale", "tags"] and meta.versions == ["1"]
    server = rpc(channel, "ServerMetadata", pb.ServerMetadataResponse)(pb.ServerMetadataRequest(), metadata=AUTH)
    assert server.name == "dagserve" and list(server.extensions) == ["binary_tensor_data"]
    ready = rpc(channel, "ModelReady", pb.ModelReadyResponse)
    assert ready(pb.ModelReadyRequest(name="tensors"), metadata=AUTH).ready is True
    with pytest.raises(grpc.RpcError) as info:
        ready(pb.ModelReadyRequest(name="tensors", version="9"), metadata=AUTH)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "no version '9'" in info.value.details()


def test_values_in_contents_and_the_request_id_and_trace(served: tuple[grpc.Channel, dict[str, dagserve.App]]) -> None:
    channel, apps = served
    seen: list[dagserve.RequestContext] = []
    apps["sleepy"].observers.append(lambda app, ctx, error, seconds: seen.append(ctx))
    infer = rpc(channel, "ModelInfer", pb.ModelInferResponse)
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response, call = infer.with_call(
        count_request(0, "hi"), metadata=(*AUTH, ("x-request-id", "grpc-rid-1"), ("traceparent", trace))
    )
    assert response.id == "my-id" and response.model_name == "sleepy" and response.outputs[0].name == "output"
    assert response.raw_output_contents[0] == b"\x02\x00\x00\x00hi"
    wait_for(lambda: len(seen) == 1)
    assert (seen[0].request_id, seen[0].protocol) == ("grpc-rid-1", "grpc")
    assert seen[0].trace is not None and seen[0].trace.traceparent.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    with pytest.raises(grpc.RpcError) as info:
        infer(count_request(1, model="nope"), metadata=(*AUTH, ("x-request-id", "grpc-rid-2")))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert ("x-request-id", "grpc-rid-2") in info.value.trailing_metadata()


def test_deadline_cancellation_admission_and_size(served: tuple[grpc.Channel, dict[str, dagserve.App]]) -> None:
    channel, apps = served
    infer = rpc(channel, "ModelInfer", pb.ModelInferResponse)
    with pytest.raises(grpc.RpcError) as info:
        infer(count_request(5), metadata=AUTH, timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: apps["sleepy"].in_flight == 0)  # the graph's work stopped with the deadline
    # A cancelled call cancels the graph's work.
    future = infer.future(count_request(30), metadata=AUTH)
    wait_for(lambda: apps["sleepy"].in_flight == 1)
    future.cancel()
    wait_for(lambda: apps["sleepy"].in_flight == 0)
    # max_in_flight=2: two calls running, the third is UNAVAILABLE.
    running = [infer.future(count_request(3), metadata=AUTH) for _ in range(2)]
    wait_for(lambda: apps["sleepy"].in_flight == 2)
    with pytest.raises(grpc.RpcError) as info:
        infer(count_request(0), metadata=AUTH)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "max_in_flight=2" in info.value.details()
    assert [r.result().id for r in running] == ["my-id", "my-id"]
    with pytest.raises(grpc.RpcError) as info:
        infer(count_request(2, model="counting"), metadata=AUTH)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ModelStreamInfer" in info.value.details()
    # max_body_bytes bounds a message.
    big = count_request(0, "x" * 70_000)
    with pytest.raises(grpc.RpcError) as info:
        infer(big, metadata=AUTH)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_stream_goes_on_after_a_failed_request(served: tuple[grpc.Channel, Any]) -> None:
    channel, _ = served
    stream = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    requests = [count_request(2, "a", "counting"), count_request(1, "b", "failing"), count_request(1, "c", "counting")]
    answers = list(stream(iter(requests), metadata=AUTH, timeout=60))
    assert [a.error_message for a in answers] == ["", "", "Node 'explode' raised ValueError: cannot count to 1", ""]
    words = [a.infer_response.raw_output_contents[1][4:] for a in answers if not a.error_message]
    assert words == [b"a-0", b"a-1", b"c-0"]
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter(requests), timeout=60))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_taken_port_fails_before_http_binds() -> None:
    with dagserve.deploy(og.counting, backend="local") as app:
        first = GrpcServer("127.0.0.1", 0)
        with BackgroundServer(app.asgi(), companions=[first]):
            second = BackgroundServer(app.asgi(), companions=[GrpcServer("127.0.0.1", first.port)])
            with pytest.raises(dagserve.DagserveError, match="did not start"):
                second.start(timeout_s=20)


def test_a_graceful_stop_lets_the_call_in_flight_finish() -> None:
    with dagserve.deploy(og.sleepy, backend="local") as app:
        server = GrpcServer("127.0.0.1", 0)
        bg = BackgroundServer(app.asgi(), companions=[server], shutdown_timeout_s=20)
        bg.start()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            infer = rpc(channel, "ModelInfer", pb.ModelInferResponse)
            running = infer.future(count_request(1, "done"))
            wait_for(lambda: app.in_flight == 1)
            bg.stop()
            assert running.result(timeout=30).raw_output_contents[0] == b"\x04\x00\x00\x00done"
            with pytest.raises(grpc.RpcError) as info:
                infer(count_request(0), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_leaving_a_stream_stops_the_graphs_stream() -> None:
    with dagserve.deploy(og.dripping, backend="local") as app:
        server = GrpcServer("127.0.0.1", 0)
        with BackgroundServer(app.asgi(), companions=[server]), grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stream = channel.stream_stream(
                "/inference.GRPCInferenceService/ModelStreamInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelStreamInferResponse.FromString,
            )
            call = stream(iter([count_request(1000, model="dripping")]), timeout=60)
            first = next(call)
            assert first.error_message == "" and first.infer_response.outputs[0].name == "i"
            assert app.in_flight == 1
            call.cancel()
            wait_for(lambda: app.in_flight == 0)
