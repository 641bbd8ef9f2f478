"""benchmarks/oip_bench.py: its graphs answer what the load expects, its bodies are what the
protocol reads, its report computes the two ratios the issue sets targets for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import dagserve
from benchmarks import oip_bench, wrk
from dagserve.http.oip_rest import request_payload
from dagserve.oip.codec import split_binary
from dagserve.oip.model import signature


def test_the_graphs_answer_as_the_load_expects(tmp_path: Path) -> None:
    with dagserve.deploy(oip_bench.chain, backend="local") as app:
        assert app.call({"x": 1}) == {"y": 4}
    binary, header_size, as_json = oip_bench._tensor_bodies(tmp_path)
    sig = signature(dagserve.compile(oip_bench.tensor))
    header, data = split_binary(binary.read_bytes(), str(header_size))
    from_binary, _ = request_payload(sig, json.loads(header), data)
    from_json, _ = request_payload(sig, json.loads(as_json.read_text()), memoryview(b""))
    assert from_binary["values"].nbytes == 1 << 20
    assert np.array_equal(from_binary["values"], from_json["values"])


def test_the_report_gives_both_ratios() -> None:
    records = [
        {"case": "chain_json_route", "concurrency": 32, "rps": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0},
        {"case": "chain_grpc_modelinfer", "concurrency": 32, "rps": 1500.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0},
        {"case": "tensor_1mib_binary", "concurrency": 8, "rps": 300.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0},
        {"case": "tensor_1mib_json_list", "concurrency": 8, "rps": 10.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0},
    ]
    text = oip_bench.report(records)
    assert "on the chain: 1.50x (target >= 1.0x; both loads from C clients, h2load and wrk)" in text
    assert "JSON list: 30.0x (target >= 5x)" in text


def test_h2load_s_grpc_calls_reach_the_graph_and_are_counted(tmp_path: Path) -> None:
    """The gRPC load as the benchmark makes it: h2load posting the message of _grpc_body to a real
    ``dagserve run --grpc-port``; the server counts each call ok (h2load itself cannot tell)."""
    from dagserve.oip import grpc_predict_v2_pb2 as pb

    body = oip_bench._grpc_body(tmp_path).read_bytes()
    assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
    request = pb.ModelInferRequest.FromString(body[5:])
    assert request.model_name == "chain" and list(request.inputs[0].contents.int64_contents) == [1]
    assert [oip_bench._ms(t) for t in ("812us", "1.5ms", "2s")] == [0.812, 1.5, 2000.0]
    proc, port, grpc_port = oip_bench._serve("local")
    try:
        result = oip_bench._h2load(f"http://127.0.0.1:{port}", grpc_port, tmp_path / "modelinfer.grpc", 2, 1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert result["errors"] == 0 and result["rps"] > 0
    assert result["ok_calls_seen_by_server"] >= result["rps"] * 0.5  # the counted second's calls, at least


def test_a_file_script_posts_the_files_bytes_with_its_headers() -> None:
    script = wrk.file_script("/tmp/body.bin", {"Inference-Header-Content-Length": "42"})
    assert 'io.open("/tmp/body.bin", "rb")' in script and 'wrk.headers["Inference-Header-Content-Length"] = "42"' in script
