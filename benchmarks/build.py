"""The ``build`` workload: how long dagserve takes to import, compile, render and start serving.

Each figure is taken in a fresh interpreter (a subprocess), as a user meets it:

* ``import``: ``import dagserve`` (best of 3; interpreter start-up not counted);
* ``compile_1000``: ``dagserve.compile`` of a 1,000-node chain;
* ``render_200``: ``Graph.render`` of a 200-node graph (20 layers of 10, each node reading two of the
  layer before) to SVG with Graphviz's ``dot``;
* ``first_answer``: ``python -m dagserve run examples.quickstart:graph --backend ray`` on a fresh
  local Ray, from the command to the first HTTP 200 (polled every 0.1 s on 127.0.0.1).

Records: ``{"workload": "build", "case", "system": "dagserve", "seconds", "target_s",
"meets_target", "rps": None, "p50_ms": None, "p99_ms": None, "errors": 0, "concurrency": 1}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import launch

ROOT = Path(__file__).resolve().parent.parent

#: The issue's targets, in seconds.
TARGETS = {"import": 0.3, "compile_1000": 0.5, "render_200": 3.0, "first_answer": 12.0}
#: Give up on the first answer after this long (the process is then stopped).
FIRST_ANSWER_LIMIT_S = 90.0

_IMPORT = "import time; t = time.perf_counter(); import dagserve; print(time.perf_counter() - t)"

_COMPILE_AND_RENDER = """
import json, sys, time
import dagserve

@dagserve.node
def step(x):
    return x

@dagserve.node
def merge(a, b):
    return a

with dagserve.Input() as inp:
    x = inp
    for _ in range(1000):
        x = step(x)
chain = dagserve.Graph(x, name="chain1000")
t = time.perf_counter()
plan = dagserve.compile(chain)
compile_s = time.perf_counter() - t
assert len(plan.steps) == 1001

with dagserve.Input() as inp:
    prev = [step.options(name=f"in_{j}")(inp[f"x{j}"]) for j in range(10)]
    for i in range(1, 20):
        prev = [merge.options(name=f"l{i}_n{j}")(prev[j], prev[(j + 1) % 10]) for j in range(10)]
wide = dagserve.Graph({f"y{j}": p for j, p in enumerate(prev)}, name="wide200")
t = time.perf_counter()
svg = wide.render(sys.argv[1])
render_s = time.perf_counter() - t
assert svg.stat().st_size > 10_000
print(json.dumps({"compile_1000": compile_s, "render_200": render_s}))
"""


def _python(code: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def first_answer_s(log_path: Path) -> float:
    """Seconds from ``dagserve run`` to its first 200 answer (raises RuntimeError past the limit)."""
    port = launch.free_port()
    cmd = [sys.executable, "-m", "dagserve", "run", "examples.quickstart:graph", "--backend", "ray",
           "--host", "127.0.0.1", "--port", str(port)]
    body = {"text": "What a GREAT film", "lang": "en"}
    with open(log_path, "wb") as log:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            with httpx.Client(timeout=2.0, trust_env=False) as client:
                while time.monotonic() - start < FIRST_ANSWER_LIMIT_S:
                    if proc.poll() is not None:
                        raise RuntimeError(f"dagserve run exited with {proc.returncode}; see {log_path}")
                    try:
                        if client.post(f"http://127.0.0.1:{port}/", json=body).status_code == 200:
                            return time.monotonic() - start
                    except httpx.TransportError:
                        pass  # not listening yet
                    time.sleep(0.1)
            raise RuntimeError(f"no 200 answer within {FIRST_ANSWER_LIMIT_S:g} s; see {log_path}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # a clean stop: the server shuts its Ray down
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def measure(log_dir: Path) -> dict[str, float]:
    """The four build figures, in seconds."""
    out: dict[str, float] = {"import": min(float(_python(_IMPORT)) for _ in range(3))}
    with tempfile.TemporaryDirectory() as tmp:
        out.update(json.loads(_python(_COMPILE_AND_RENDER, str(Path(tmp) / "wide.svg"))))
    out["first_answer"] = first_answer_s(log_dir / "build-first-answer.log")
    return out


def records(figures: dict[str, float], mode: str) -> list[dict[str, Any]]:
    return [
        {
            "workload": "build",
            "case": case,
            "system": "dagserve",
            "seconds": round(seconds, 4),
            "target_s": TARGETS[case],
            "meets_target": seconds < TARGETS[case],
            "rps": None,
            "p50_ms": None,
            "p99_ms": None,
            "errors": 0,
            "concurrency": 1,
            "mode": mode,
        }
        for case, seconds in figures.items()
    ]


def table(recs: list[dict[str, Any]]) -> str:
    lines = [
        "== build: import, compile a 1,000-node graph, render a 200-node graph, `dagserve run` to the first answer",
        f"{'case':<14} {'seconds':>8} {'target':>8}  met",
    ]
    for r in recs:
        lines.append(f"{r['case']:<14} {r['seconds']:>8.3f} {r['target_s']:>8.1f}  {'yes' if r['meets_target'] else 'NO'}")
    return "\n".join(lines)
