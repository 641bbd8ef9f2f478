"""Where a request's time goes: py-spy on a system's processes while wrk loads the chain.

    python -m benchmarks.profile_hop [--system dagserve] [--seconds 8] [--out docs/img]

Starts the system on the ``chain`` workload (32 connections), warms it up, then samples its
ingress process and, on Ray, the model step's replica with ``py-spy record --pid`` (250 Hz,
``--nonblocking``: the target is never paused) while wrk runs. Writes a flame graph per process
(``profile-<system>-<process>.svg``) and prints where the samples went by layer (HTTP, executor,
transport, event loop...), with the CPU time per request that share stands for (samples / rate /
requests answered while sampling). py-spy attaches with ptrace; where that is refused (a container
without CAP_SYS_PTRACE), start the server under it instead:
``py-spy record -o x.svg -- python -m benchmarks.servers.dagserve_app --workload chain --port 8000 --backend ray``.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import launch, wrk
from benchmarks.systems import SYSTEMS
from benchmarks.workloads import WORKLOADS

OUT = Path(__file__).resolve().parent.parent / "docs" / "img"
RATE_HZ = 250
#: A stack whose innermost Python frame is one of these was in native code below Python: uvloop's
#: loop (libuv's I/O, its callbacks' C parts), or Ray's core worker (C++) in a replica's main thread.
NATIVE = re.compile(r"^(Runner\.run|Thread\.run|Worker\.main_loop|run_forever|run_until_complete) ")
NATIVE_LAYER = "native code under Python: uvloop's loop and socket I/O, Ray's core worker"
#: Else a stack's share goes to the innermost frame that matches one of these, in this order.
LAYERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("direct transport (frames, pickling, socket writes)", re.compile(r"backends/ray/direct/")),
    ("Ray runner (calls, results)", re.compile(r"backends/ray/")),
    ("request scope (runtime/scope.py, app/)", re.compile(r"dagserve/runtime/scope\.py|dagserve/app/")),
    ("executor (the graph's dataflow)", re.compile(r"dagserve/runtime/")),
    ("dagserve ingress (http/)", re.compile(r"dagserve/http/")),
    ("Starlette (routing, request, response)", re.compile(r"starlette/")),
    ("uvicorn + httptools (HTTP parsing, transport)", re.compile(r"uvicorn/|httptools")),
    ("the steps' own code", re.compile(r"benchmarks/servers/")),
    ("asyncio tasks and futures (Python side)", re.compile(r"asyncio/|uvloop")),
    ("Ray's Python code", re.compile(r"ray/")),
)


def layers(raw: str) -> tuple[int, collections.Counter[str]]:
    """Samples in py-spy's raw output (``frame;frame;... count`` lines), by layer."""
    total = 0
    by_layer: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        n = int(count)
        total += n
        frames = stack.split(";")
        if NATIVE.match(frames[-1]):
            layer = NATIVE_LAYER
        else:
            layer = next((name for f in reversed(frames) for name, rx in LAYERS if rx.search(f)), "other")
        by_layer[layer] += n
    return total, by_layer


def _replica_pids(root: int, step: str) -> list[int]:
    import psutil

    found = []
    for p in psutil.Process(root).children(recursive=True):
        try:
            if "ServeReplica" in " ".join(p.cmdline()) and f":{step}" in " ".join(p.cmdline()):
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_hop", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--system", default="dagserve", choices=sorted(s for s in SYSTEMS if "chain" in SYSTEMS[s].workloads))
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    workload = WORKLOADS["chain"]
    case = workload.cases[0]
    log_dir = Path(tempfile.mkdtemp(prefix="dagserve-profile-"))
    with launch.running(SYSTEMS[args.system], [workload], log_dir, stop_timeout_s=20) as server:
        url = server.url(case)
        wrk.run(url, case.body, connections=case.concurrency, duration_s=2)
        targets = {"ingress": server.process.pid}
        if args.system.startswith("dagserve") and "local" not in args.system:
            targets.update({"replica": pid for pid in _replica_pids(server.process.pid, "model")[:1]})
        spies = {}
        for name, pid in targets.items():
            stem = args.out / f"profile-{args.system}-{name}"
            spies[name] = [
                subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(args.seconds), "--rate",
                                  str(RATE_HZ), "--nonblocking", "--format", fmt, "-o", f"{stem}.{ext}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                for fmt, ext in (("flamegraph", "svg"), ("raw", "txt"))
            ]
        result = wrk.run(url, case.body, connections=case.concurrency, duration_s=args.seconds + 1)
        for procs in spies.values():
            for p in procs:
                out = p.communicate(timeout=120)[0].decode(errors="replace")
                if p.returncode != 0:
                    print(f"py-spy failed ({p.returncode}); is ptrace allowed? {out[-300:]}", file=sys.stderr)
                    return 1
    requests = result.rps * args.seconds
    print(f"{args.system} chain, {case.concurrency} connections: {result.rps:.0f} req/s while sampling "
          f"(p50 {result.p50_ms:.2f} ms)")
    for name in targets:
        raw_path = args.out / f"profile-{args.system}-{name}.txt"
        total, by_layer = layers(raw_path.read_text())
        raw_path.unlink()  # the flame graph is what is kept
        cpu_us = total / RATE_HZ / requests * 1e6
        print(f"== {name}: {total} samples, {cpu_us:.0f} µs of CPU per request "
              f"(flame graph: {args.out / f'profile-{args.system}-{name}.svg'})")
        for layer, n in by_layer.most_common():
            print(f"  {100 * n / total:5.1f}%  {cpu_us * n / total:6.0f} µs  {layer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
