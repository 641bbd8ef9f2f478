"""``dagserve run TARGET --backend local`` in a subprocess on 127.0.0.1, for the job benchmarks and
the job tests: started and waited for until ``/-/ready``, killed (SIGKILL) or stopped (SIGTERM)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["DagserveRun"]

ROOT = Path(__file__).resolve().parent.parent


class DagserveRun:
    """``dagserve run TARGET --backend local --no-admin --port PORT *args``; its output appends to ``out``."""

    def __init__(self, target: str, port: int, *args: str, out: Path, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 90.0) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.out = out
        self._out = out.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dagserve", "run", target, "--backend", "local", "--port", str(port), "--no-admin", *args],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=self._out, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                self._out.close()
                raise RuntimeError(f"dagserve run exited before it was ready:\n{out.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dagserve run was not ready within {ready_timeout_s:g} s")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._out.close()

    def stop(self) -> str:
        """SIGTERM (a graceful stop), then everything the server wrote."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()
        return self.out.read_text()
