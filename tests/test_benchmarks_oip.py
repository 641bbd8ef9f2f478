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
    assert "on the chain: 1.50x (target >= 1.0x)" in text and "JSON list: 30.0x (target >= 5x)" in text


def test_a_file_script_posts_the_files_bytes_with_its_headers() -> None:
    script = wrk.file_script("/tmp/body.bin", {"Inference-Header-Content-Length": "42"})
    assert 'io.open("/tmp/body.bin", "rb")' in script and 'wrk.headers["Inference-Header-Content-Length"] = "42"' in script
