"""docs/protocols.md runs as printed: its graph served by ``dagserve run --grpc-port``, its
``$ curl`` lines answered as shown, its tritonclient blocks (run with .venv-clients' Python)
printing what the page shows."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.test_docs import ROOT, _dagserve_run, _free_port, _followed_by_output, blocks

PAGE = ROOT / "docs" / "protocols.md"
CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"

pytestmark = pytest.mark.http


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """The OIP section's graph module (its first python block) served as the page says."""
    text = PAGE.read_text(encoding="utf-8")
    section = text[: text.index("## Open Inference Protocol")].count("\n") + 1  # the files section comes first
    module = next(b for b in blocks(text) if b.language == "python" and not b.flags and b.line > section)
    assert "dagserve run scoring:graphs --backend local --port 8000 --grpc-port 8001" in text
    cwd = tmp_path_factory.mktemp("protocols")
    (cwd / "scoring.py").write_text(module.code, encoding="utf-8")
    grpc_port = _free_port()
    with _dagserve_run("scoring:graphs", cwd, "--grpc-port", str(grpc_port), "--no-admin") as base:
        yield int(base.rsplit(":", 1)[1]), grpc_port


def _localised(text: str, port: int, grpc_port: int) -> str:
    return text.replace("localhost:8000", f"127.0.0.1:{port}").replace("localhost:8001", f"127.0.0.1:{grpc_port}")


def test_curl_lines_answer_as_shown(served: tuple[int, int]) -> None:
    text = PAGE.read_text(encoding="utf-8")
    checked = 0
    for block in blocks(text):
        if block.language != "console" or "tested" in block.flags:  # those: the files section's (test_docs)
            continue
        for command, shown in re.findall(r"^\$ (curl .+)\n(.+)$", block.code, flags=re.M):
            done = subprocess.run(_localised(command, *served), shell=True, capture_output=True, text=True, timeout=30)
            assert done.stdout == shown, f"{command} answered {done.stdout!r}; the page shows {shown!r}"
            checked += 1
    assert checked == 3


def test_tritonclient_blocks_print_what_the_page_shows(served: tuple[int, int]) -> None:
    assert CLIENTS_PYTHON.exists(), "the protocol clients' environment is missing: scripts/setup.sh --test makes it"
    text = PAGE.read_text(encoding="utf-8")
    found = blocks(text)
    ran = 0
    for k, block in enumerate(found):
        if block.language != "python" or "clients" not in block.flags:
            continue
        nxt = found[k + 1] if k + 1 < len(found) else None
        assert nxt is not None and _followed_by_output(text, block, nxt), f"protocols.md:{block.line} shows no output"
        done = subprocess.run(
            [str(CLIENTS_PYTHON), "-c", _localised(block.code, *served)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"protocols.md:{block.line}: {done.stderr}"
        assert done.stdout.rstrip("\n").splitlines() == nxt.code.rstrip("\n").splitlines(), f"protocols.md:{block.line}"
        ran += 1
    assert ran == 3
