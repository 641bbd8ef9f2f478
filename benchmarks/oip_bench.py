"""The Open Inference Protocol's throughput: gRPC against the JSON route, binary tensors against JSON lists.

``python -m benchmarks.oip_bench [--duration 6] [--backend local]``

One ``dagserve run`` (HTTP and ``--grpc-port``) serves two graphs on 127.0.0.1:

* ``chain``: pre (x+1) -> model (*2) -> post ({'y': n}), the ``chain`` workload's three trivial
  ``async def`` steps (benchmarks/servers/dagserve_app.py) with an ``x: int`` schema. Measured
  through the JSON route (``wrk``, 32 connections) and through gRPC ``ModelInfer`` with ``h2load``
  (nghttp2's C load generator, Debian's ``nghttp2-client``: 32 HTTP/2 connections, one call in
  flight on each, the same serialized ``ModelInferRequest`` each time), so that both loads come
  from a C client that leaves the cores to the server. h2load cannot read gRPC's status trailers:
  the server's own ``dagserve_requests_total{protocol="grpc"}`` is read before and after, and a
  call that was not ``ok`` is counted as an error. h2load reports no percentiles (its mean is
  recorded). The same load from one ``grpc.aio`` client process is recorded too
  (``chain_grpc_modelinfer_python``): what a Python client gets, its own CPU taken from the server's.
  Target: gRPC (h2load) >= 1.0x the JSON route.
  The server's CPU time per request is reported too (its process's user+system time over the
  run): the load generator's own cost does not blur it.
* ``tensor``: one ``FP32 [-1]`` input of 1 MiB (262,144 floats), answered with its sum. Sent to
  ``/v2/models/tensor/infer`` with the binary tensor data extension and as a JSON list (``wrk``,
  8 connections each). Target: binary >= 5x the JSON list's requests/s.

Records go to ``benchmarks/results/oip.json``. Figures from a shared or loaded machine are
indicative only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel

import dagserve
from benchmarks import wrk

RESULTS = Path(__file__).resolve().parent / "results" / "oip.json"
HOST = "127.0.0.1"
TENSOR_FLOATS = 262_144  # 1 MiB of FP32


class X(BaseModel):
    x: int


@dagserve.node
async def pre(req: X) -> int:
    return req.x + 1


@dagserve.node
async def model(n: int) -> int:
    return n * 2


@dagserve.node
async def post(n: int) -> dict[str, int]:
    return {"y": n}


class Floats(BaseModel):
    values: Annotated[np.ndarray, dagserve.TensorSpec("FP32", [-1])]


@dagserve.node
def total(req: Floats) -> dict[str, float]:
    return {"sum": float(req.values.sum())}


with dagserve.Input(schema=X) as _inp:
    chain = dagserve.Graph(post(model(pre(_inp))), name="chain")
with dagserve.Input(schema=Floats) as _inp2:
    tensor = dagserve.Graph(total(_inp2), name="tensor")
graphs = [chain, tensor]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _serve(backend: str) -> tuple[subprocess.Popen[bytes], int, int]:
    port, grpc_port = _free_port(), _free_port()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve", "run", "benchmarks.oip_bench:graphs", "--backend", backend, "--port",
         str(port), "--grpc-port", str(grpc_port), "--no-admin", "--log-level", "warning", "--max-body-size", "32MiB"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import httpx

    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError("dagserve run exited before it was ready")
        try:
            if httpx.get(f"http://{HOST}:{port}/v2/health/ready", timeout=2).status_code == 200:
                return proc, port, grpc_port
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("dagserve run was not ready within 180 s")
        time.sleep(0.3)


# -- the gRPC load: one process, ``concurrency`` calls in flight --------------------------------------


async def _grpc_load(port: int, concurrency: int, duration_s: float) -> dict[str, Any]:
    import grpc

    from dagserve.oip import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name="chain")
    request.inputs.add(name="x", datatype="INT64", shape=[1]).contents.int64_contents.append(1)
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        first = await infer(request)
        assert np.frombuffer(first.raw_output_contents[0], "<i8").tolist() == [4], first
        latencies: list[float] = []
        errors = 0
        stop = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < stop:
                try:
                    await infer(request)
                except grpc.aio.AioRpcError:
                    errors += 1
                latencies.append(time.perf_counter() - now)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "errors": errors,
    }


def _grpc_body(directory: Path) -> Path:
    """One gRPC message (the 5-byte length prefix, then a serialized ``ModelInferRequest`` for the
    chain with ``x = 1``), the body h2load sends on every call."""
    from dagserve.oip import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name="chain")
    request.inputs.add(name="x", datatype="INT64", shape=[1]).contents.int64_contents.append(1)
    message = request.SerializeToString()
    path = directory / "modelinfer.grpc"
    path.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    return path


def _grpc_outcomes(base: str) -> dict[str, float]:
    """The server's count of the chain's gRPC requests by outcome (``/metrics``)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=30).text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "dagserve_requests_total" and labels.get("protocol") == "grpc" and labels.get("graph") == "chain":
                out[labels["outcome"]] = out.get(labels["outcome"], 0.0) + sample.value
    return out


def _h2load(base: str, port: int, body: Path, connections: int, duration_s: float) -> dict[str, Any]:
    """``ModelInfer`` calls from h2load for ``duration_s`` (after a 1 s warm-up it does not count)."""
    before = _grpc_outcomes(base)
    done = subprocess.run(
        ["h2load", "-c", str(connections), "-m", "1", "-D", str(max(1, round(duration_s))), "--warm-up-time", "1",
         "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body),
         f"http://{HOST}:{port}/inference.GRPCInferenceService/ModelInfer"],
        capture_output=True, text=True, timeout=duration_s + 120, check=True,
    )
    after = _grpc_outcomes(base)
    out = done.stdout
    rps = re.search(r"finished in [0-9.]+m?s, ([0-9.]+) req/s", out)
    # h2load: "errored" and "timeout" are parts of "failed", not more of them.
    counts = re.search(r"requests: .* (\d+) failed, \d+ errored, \d+ timeout", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if rps is None or counts is None or mean is None:
        raise RuntimeError(f"cannot read h2load's report:\n{out}")
    not_ok = sum(n - before.get(outcome, 0.0) for outcome, n in after.items() if outcome != "ok")
    return {"rps": float(rps.group(1)), "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": _ms(mean.group(1)),
            "errors": int(counts.group(1)) + int(not_ok),
            "ok_calls_seen_by_server": after.get("ok", 0.0) - before.get("ok", 0.0), "client": "h2load"}


def _ms(text: str) -> float:
    """h2load's durations (``812us``, ``1.32ms``, ``2.01s``) in milliseconds."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float("nan")


def _grpc_client(port: int, concurrency: int, duration_s: float) -> dict[str, Any]:
    """The gRPC load from a process of its own (as wrk is), so that it does not share the harness's GIL."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.oip_bench", "--grpc-client", str(port), str(concurrency), str(duration_s)],
        capture_output=True, text=True, timeout=duration_s + 120, check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                           os.environ.get("PYTHONPATH", "")])},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- the tensor bodies ----------------------------------------------------------------------------------


def _tensor_bodies(directory: Path) -> tuple[Path, int, Path]:
    """(binary body, its JSON header's length, JSON body) of one 1 MiB FP32 tensor."""
    values = np.random.default_rng(0).random(TENSOR_FLOATS, dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "values", "datatype": "FP32", "shape": [TENSOR_FLOATS],
                                     "parameters": {"binary_data_size": values.nbytes}}]}).encode()
    binary = directory / "binary.bin"
    binary.write_bytes(header + values.astype("<f4").tobytes())
    as_json = directory / "list.json"
    as_json.write_text(json.dumps({"inputs": [{"name": "values", "datatype": "FP32", "shape": [TENSOR_FLOATS],
                                               "data": values.tolist()}]}))
    return binary, len(header), as_json


def _record(name: str, result: Any, concurrency: int) -> dict[str, Any]:
    if isinstance(result, dict):
        return {"case": name, "concurrency": concurrency, **result}
    return {"case": name, "concurrency": concurrency, "rps": result.rps, "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms, "errors": result.errors}


def measure(duration_s: float, backend: str) -> list[dict[str, Any]]:
    import psutil  # a dependency of Ray's

    proc, port, grpc_port = _serve(backend)
    server = psutil.Process(proc.pid)
    base = f"http://{HOST}:{port}"
    records = []

    def timed(name: str, concurrency: int, run: Any) -> None:
        # The server's own CPU per request: what the load generator's cost cannot blur.
        before = sum(server.cpu_times()[:2])
        record = _record(name, run(), concurrency)
        record["server_cpu_us"] = (sum(server.cpu_times()[:2]) - before) / max(1.0, record["rps"] * duration_s) * 1e6
        records.append(record)

    try:
        with tempfile.TemporaryDirectory(prefix="dagserve-oip-") as tmp:
            binary, header_size, as_json = _tensor_bodies(Path(tmp))
            wrk.run(f"{base}/chain", {"x": 1}, connections=32, duration_s=1)  # warm-up
            timed("chain_json_route", 32, lambda: wrk.run(f"{base}/chain", {"x": 1}, connections=32, duration_s=duration_s))
            body = _grpc_body(Path(tmp))
            _h2load(base, grpc_port, body, 32, 1)  # warm-up
            timed("chain_grpc_modelinfer", 32, lambda: _h2load(base, grpc_port, body, 32, duration_s))
            _grpc_client(grpc_port, 32, 1)  # warm-up
            timed("chain_grpc_modelinfer_python", 32,
                  lambda: {**_grpc_client(grpc_port, 32, duration_s), "client": "grpc.aio"})
            url = f"{base}/v2/models/tensor/infer"
            for case, path, headers in (
                ("tensor_1mib_binary", binary, {"Inference-Header-Content-Length": str(header_size),
                                                "Content-Type": "application/octet-stream"}),
                ("tensor_1mib_json_list", as_json, {"Content-Type": "application/json"}),
            ):
                script = wrk.file_script(str(path), headers)
                wrk.run(url, {}, connections=8, duration_s=1, script=script)  # warm-up
                timed(case, 8, lambda: wrk.run(url, {}, connections=8, duration_s=duration_s, script=script))  # noqa: B023
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return records


def report(records: list[dict[str, Any]]) -> str:
    by = {r["case"]: r for r in records}
    lines = [f"{'case':<30}{'conc':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'server CPU µs/req':>19}"]
    lines += [f"{r['case']:<30}{r['concurrency']:>6}{r['rps']:>10.1f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}"
              f"{r.get('server_cpu_us', float('nan')):>19.0f}" for r in records]
    lines.append(f"gRPC ModelInfer / JSON route on the chain: {_ratio(by, 'chain_grpc_modelinfer', 'chain_json_route', 2)}"
                 " (target >= 1.0x; both loads from C clients, h2load and wrk)")
    if "chain_grpc_modelinfer_python" in by:
        lines.append(f"  the same load from a Python grpc.aio client: {_ratio(by, 'chain_grpc_modelinfer_python', 'chain_json_route', 2)}")
    lines.append(f"1 MiB FP32 tensor, binary extension / JSON list: {_ratio(by, 'tensor_1mib_binary', 'tensor_1mib_json_list', 1)}"
                 " (target >= 5x)")
    return "\n".join(lines)


def _ratio(by: dict[str, dict[str, Any]], case: str, baseline: str, digits: int) -> str:
    if not by[baseline]["rps"]:
        return f"n/a ({baseline} completed no request in the run; raise --duration)"
    return f"{by[case]['rps'] / by[baseline]['rps']:.{digits}f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.oip_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run (default 8)")
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    parser.add_argument("--grpc-client", nargs=3, metavar=("PORT", "CONCURRENCY", "SECONDS"), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.grpc_client:
        port, concurrency, seconds = args.grpc_client
        print(json.dumps(asyncio.run(_grpc_load(int(port), int(concurrency), float(seconds)))))
        return 0
    records = measure(args.duration, args.backend)
    print(report(records), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"backend": args.backend, "duration_s": args.duration, "records": records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
