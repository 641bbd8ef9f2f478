"""docs/jobs.md's shell sessions run as printed: each ```console block's ``$`` lines run in one
bash, in order, against ``dagserve run examples.quickstart:graph --backend local`` (on a free
port instead of 8000), and print what the page shows under them (``…`` stands for any text: ids,
request ids). Its Python blocks run in tests/test_docs.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_docs import ROOT, _dagserve_run, blocks

pytestmark = pytest.mark.http


def sessions(text: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of every ``$`` line of the page's console blocks."""
    out: list[tuple[str, list[str]]] = []
    for block in blocks(text):
        if block.language != "console":
            continue
        for line in block.code.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif out:
                out[-1][1].append(line)
    return out


def matches(expected: str, got: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, got) is not None


def test_the_shell_sessions_answer_as_printed(tmp_path: Path) -> None:
    steps = sessions((ROOT / "docs/jobs.md").read_text(encoding="utf-8"))
    assert len(steps) >= 8
    with _dagserve_run("examples.quickstart:graph", tmp_path) as base:
        port = base.rsplit(":", 1)[1]
        script = "".join(f"echo '@@{i}@@'\n{cmd.replace('127.0.0.1:8000', f'127.0.0.1:{port}')} 2>&1\n" for i, (cmd, _) in enumerate(steps))
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
            "DAGSERVE_URL": base,
        }
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    outputs = re.split(r"^@@\d+@@\n", done.stdout, flags=re.M)[1:]
    assert len(outputs) == len(steps), done.stdout + done.stderr
    for (cmd, expected), got in zip(steps, outputs, strict=True):
        got_lines = got.rstrip("\n").splitlines() if got.strip() else []
        assert len(got_lines) == len(expected) and all(map(matches, expected, got_lines)), (
            f"$ {cmd}\nshown:\n" + "\n".join(expected) + "\nprinted:\n" + got
        )
