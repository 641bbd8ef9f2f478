"""Calls a dagserve server with tritonclient (http and grpc), as a user would; prints one JSON
document of what came back. Run by tests/http/test_oip_clients.py with .venv-clients' Python:

    oip_check.py HTTP_HOST:PORT GRPC_HOST:PORT TOKEN
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

PIXELS = np.arange(12, dtype=np.float32).reshape(3, 4)


def inputs(mod: Any, pixels: np.ndarray = PIXELS, extra: tuple[Any, ...] = ()) -> list[Any]:
    x = mod.InferInput("pixels", list(pixels.shape), {np.float32: "FP32", np.float64: "FP64"}[pixels.dtype.type])
    x.set_data_from_numpy(pixels)
    name = mod.InferInput("name", [1], "BYTES")
    name.set_data_from_numpy(np.array([b"ada"], dtype=object))
    scale = mod.InferInput("scale", [1], "FP64")
    scale.set_data_from_numpy(np.array([2.0]))
    tags = mod.InferInput("tags", [2], "BYTES")
    tags.set_data_from_numpy(np.array([b"a", b"b"], dtype=object))
    return [x, name, scale, tags, *extra]


def error(call: Any) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return f"{exc.status()} {exc.message()}"
    return "no error"


def check(mod: Any, url: str, token: str) -> dict[str, Any]:
    auth = {"authorization": f"Bearer {token}"}
    client = mod.InferenceServerClient(url)
    out: dict[str, Any] = {"live": client.is_server_live(), "ready": client.is_server_ready(headers=auth)}
    meta = client.get_model_metadata("tensors", headers=auth)
    if mod is grpcclient:
        meta = {"inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs]}
    out["inputs"] = meta["inputs"]
    result = client.infer("tensors", inputs(mod), headers=auth)
    out["result"] = {
        "sums": result.as_numpy("sums").tolist(),
        "greeting": [b.decode() for b in result.as_numpy("greeting").tolist()],
        "rows": result.as_numpy("rows").tolist(),
        "tags": [b.decode() for b in result.as_numpy("tags").tolist()],
    }
    if mod is httpclient:  # the same, asking for JSON outputs instead of binary
        wanted = [httpclient.InferRequestedOutput("sums", binary_data=False)]
        out["json_sums"] = client.infer("tensors", inputs(mod), outputs=wanted, headers=auth).as_numpy("sums").tolist()
    out["errors"] = {
        "datatype": error(lambda: client.infer("tensors", inputs(mod, PIXELS.astype(np.float64)), headers=auth)),
        "shape": error(lambda: client.infer("tensors", inputs(mod, np.zeros((2, 3), np.float32)), headers=auth)),
        "unknown_tensor": error(lambda: client.infer("tensors", inputs(mod, extra=(_extra(mod),)), headers=auth)),
        "missing_tensor": error(lambda: client.infer("tensors", inputs(mod)[1:], headers=auth)),
        "unknown_model": error(lambda: client.infer("nope", inputs(mod), headers=auth)),
        "token": error(lambda: client.infer("tensors", inputs(mod))),
        "node": error(lambda: client.infer("failing", _count(mod, 3, "x"), headers=auth)),
    }
    if mod is grpcclient:
        out["errors"]["deadline"] = error(
            lambda: client.infer("sleepy", _count(mod, 5, "z"), headers=auth, client_timeout=0.5)
        )
        out["stream"] = stream(client, auth)
    return out


def _extra(mod: Any) -> Any:
    t = mod.InferInput("colour", [1], "BYTES")
    t.set_data_from_numpy(np.array([b"red"], dtype=object))
    return t


def _count(mod: Any, n: int, word: str) -> list[Any]:
    a = mod.InferInput("n", [1], "INT64")
    a.set_data_from_numpy(np.array([n], dtype=np.int64))
    b = mod.InferInput("word", [1], "BYTES")
    b.set_data_from_numpy(np.array([word.encode()], dtype=object))
    return [a, b]


def stream(client: Any, auth: dict[str, str]) -> list[Any]:
    """ModelStreamInfer on the streaming graph: each item as it comes."""
    got: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)), headers=auth)
    client.async_stream_infer("counting", _count(grpcclient, 3, "w"), request_id="s1")
    items = []
    for _ in range(3):
        result, err = got.get(timeout=30)
        if err is not None:
            items.append({"error": str(err)})
        else:
            items.append({"i": result.as_numpy("i").tolist(), "word": [b.decode() for b in result.as_numpy("word").tolist()]})
    client.stop_stream()
    return items


if __name__ == "__main__":
    http_url, grpc_url, token = sys.argv[1:4]
    print(json.dumps({"http": check(httpclient, http_url, token), "grpc": check(grpcclient, grpc_url, token)}))
