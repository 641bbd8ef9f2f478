"""Every Python code block in the README and the tested docs pages runs, and shows true output.

The mechanism, for anyone writing a page:

* A page is tested when it is listed in :data:`PAGES` or contains the line
  ``<!-- test-code-blocks -->`` (other pages opt in with that line).
* Its ```` ```python ```` blocks run in order, with the working directory set to a temporary
  directory, each alone (its own namespace), so that a reader can copy any one of them and run
  it as printed. A block that continues earlier ones says so in its first line, a comment that
  starts with :data:`CONTINUES` (``# continues "Heading": what it uses``); it runs with what the
  page's blocks before it defined, like a notebook cell.
* A ```` ```text ```` block placed right after a python block is that block's expected output:
  what it prints must match, line for line (trailing spaces ignored).
* ```` ```python legacy ```` blocks are code of another library (Ray Serve's removed API in the
  migration guide): they are compiled to check their syntax, never run.
* ```` ```python clients ```` blocks call a served graph with a protocol client (tritonclient,
  openai) that lives in .venv-clients: compiled here; tests/test_docs_protocols.py runs them.
* Other blocks (bash, console, json, text elsewhere) are not run.
* Apps a page deploys and leaves running are shut down after the page.

Beyond the blocks: the README's first example stays under 25 lines and shows its output; the
``$ curl`` lines of the README and of getting-started are sent to the graph they describe, served
by ``dagserve run``, and must answer exactly what the page shows; relative links (and their
``#anchors``) must resolve; the errors reference has a section per error class.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- test-code-blocks -->"
#: The first line of a python block that continues the page's earlier blocks.
CONTINUES = "# continues"

#: Pages whose code blocks must run (the examples-and-docs owner's pages).
PAGES = [
    "README.md",
    "docs/index.md",
    "docs/getting-started.md",
    "docs/graphs.md",
    "docs/options.md",
    "docs/python-api.md",
    "docs/testing.md",
    "docs/errors.md",
    "docs/migration-from-ray-dag.md",
]

_FENCE = re.compile(r"^(?P<indent>[ ]{0,3})(?P<fence>`{3,})(?P<info>[^`\n]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its info string (``python``, ``python legacy``, ``text`` ...)."""

    info: str
    code: str
    line: int  # 1-based line of the opening fence

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def flags(self) -> set[str]:
        return set(self.info.split()[1:])


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text, in order."""
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m["fence"], m["info"].strip(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        out.append(Block(info, "\n".join(body) + "\n", start + 1))
        i += 1
    return out


def _followed_by_output(text: str, block: Block, nxt: Block | None) -> bool:
    """Is ``nxt`` a ```text block with nothing but blank lines between it and ``block``?"""
    if nxt is None or nxt.language != "text":
        return False
    lines = text.splitlines()
    end = block.line + block.code.count("\n")  # the closing fence's index (0-based)
    between = lines[end + 1 : nxt.line - 1]
    return all(not line.strip() for line in between)


def pages_to_test() -> list[str]:
    pages = list(PAGES)
    for page in sorted((ROOT / "docs").glob("*.md")):
        rel = page.relative_to(ROOT).as_posix()
        if rel not in pages and MARKER in page.read_text(encoding="utf-8"):
            pages.append(rel)
    return pages


def _shutdown_apps(namespace: dict[str, Any]) -> None:
    import dagserve

    for value in list(namespace.values()):
        if isinstance(value, dagserve.App) and not value.closed:
            value.shutdown()


def run_page(rel: str) -> int:
    """Run a page's blocks; returns how many python blocks ran. Fails with the page and line."""
    path = ROOT / rel
    text = path.read_text(encoding="utf-8")
    found = blocks(text)
    name = f"docs_{path.stem.replace('-', '_')}"
    page: dict[str, Any] = {"__name__": name}  # what the page's blocks defined so far
    namespaces = [page]
    ran = 0
    try:
        for k, block in enumerate(found):
            if block.language != "python":
                continue
            where = f"{rel}:{block.line}"
            code = compile(block.code, where, "exec", dont_inherit=True)  # not this file's __future__ imports
            if "legacy" in block.flags or "clients" in block.flags:
                continue
            namespace = page if continues(block) else {"__name__": name}
            namespaces.append(namespace)
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    exec(code, namespace)  # noqa: S102 - running documentation is the point
            except NameError as exc:
                raise AssertionError(
                    f"{where}: the block does not run alone ({exc}); define what it uses, or make its first "
                    f"line say which earlier block it continues: {CONTINUES} \"Heading\": ..."
                ) from exc
            if namespace is not page:
                page.update(namespace)
            ran += 1
            nxt = found[k + 1] if k + 1 < len(found) else None
            if _followed_by_output(text, block, nxt):
                assert nxt is not None
                got = [line.rstrip() for line in out.getvalue().rstrip("\n").splitlines()]
                want = [line.rstrip() for line in nxt.code.rstrip("\n").splitlines()]
                assert got == want, (
                    f"{where}: printed output differs from the text block at line {nxt.line}:\n"
                    + "\n".join(difflib.unified_diff(want, got, "shown", "printed", lineterm=""))
                )
    finally:
        for namespace in namespaces:
            _shutdown_apps(namespace)
    return ran


def continues(block: Block) -> bool:
    """Does the block say (first line) that it continues the page's earlier blocks?"""
    return block.code.lstrip().startswith(CONTINUES)


# -- the mechanism itself ------------------------------------------------------------------------


def test_blocks_finds_fences_info_and_lines() -> None:
    text = "intro\n```python\nx = 1\n```\n\n```text\n1\n```\n````python legacy\ny\n````\n"
    found = blocks(text)
    assert [(b.language, b.flags, b.line) for b in found] == [
        ("python", set(), 2),
        ("text", set(), 6),
        ("python", {"legacy"}, 9),
    ]
    assert found[0].code == "x = 1\n"
    assert _followed_by_output(text, found[0], found[1])
    assert not _followed_by_output(text, found[1], found[2])


def test_wrong_output_fails_with_page_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nprint('a')\n```\n```text\nb\n```\n", encoding="utf-8")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    with pytest.raises(AssertionError, match=r"page\.md:1: printed output differs"):
        run_page("page.md")


def test_each_block_runs_alone_unless_it_says_it_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "page.md"
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    page.write_text("# A\n```python\nx = 1\n```\n```python\nprint(x)\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match=r"page\.md:5: the block does not run alone .*name 'x' is not defined"):
        run_page("page.md")
    page.write_text('```python\nx = 1\n```\n```python\n# continues "A": x\nprint(x)\n```\n```text\n1\n```\n')
    assert run_page("page.md") == 2


def test_legacy_blocks_are_compiled_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python legacy\nimport no_such_module\n```\n```python legacy\nx = (\n```\n", encoding="utf-8")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    with pytest.raises(SyntaxError):
        run_page("page.md")


# -- the pages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("page", pages_to_test())
def test_page_code_blocks_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (ROOT / page).exists(), f"{page} is listed as tested but does not exist"
    monkeypatch.chdir(tmp_path)
    ran = run_page(page)
    text = (ROOT / page).read_text(encoding="utf-8")
    # A page that shows Python must run some of it; a page without Python passes trivially.
    assert ran > 0 or not any(b.language == "python" and not b.flags & {"legacy", "clients"} for b in blocks(text))


def test_readme_first_example_is_short_and_prints_what_it_shows() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = blocks(text)
    first = next(k for k, b in enumerate(found) if b.language == "python")
    code = found[first].code
    assert len(code.strip().splitlines()) < 25, "the README's first example must stay under 25 lines"
    nxt = found[first + 1] if first + 1 < len(found) else None
    assert _followed_by_output(text, found[first], nxt), "the README's first example shows its output"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_slug_matches_githubs_anchors() -> None:
    assert _slug("Weighted routing: `split`") == "weighted-routing-split"
    assert _slug("Mounting the graph's HTTP ingress: `App.asgi()`") == "mounting-the-graphs-http-ingress-appasgi"


def test_docs_links_point_to_existing_files_and_headings() -> None:
    """Relative links in tested pages resolve, anchors included (pages other engineers write too)."""
    missing = []
    for rel in pages_to_test():
        page = ROOT / rel
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                missing.append(f"{rel} -> {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                missing.append(f"{rel} -> {target}#{anchor}")
    assert not missing, "broken links: " + ", ".join(missing)


def test_errors_page_documents_every_error_class() -> None:
    from dagserve import _errors

    text = (ROOT / "docs/errors.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (\w+)$", text, flags=re.M))
    missing = sorted(set(_errors.__all__) - headings)
    assert not missing, f"docs/errors.md has no section for: {', '.join(missing)}"


# -- shell examples that talk to a served graph ------------------------------------------------------

_CURL = re.compile(
    r"^\$ curl -s (?P<url>\S+) -H 'content-type: application/json' -d '(?P<body>[^']*)'\n(?P<out>.+)$", re.M
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _dagserve_run(target: str, cwd: Path, *extra: str) -> Iterator[str]:
    """``dagserve run TARGET --backend local`` (and ``extra`` options) on a free port; yields the base URL."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve", "run", target, "--backend", "local", "--port", str(port), *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "dagserve run exited"
            try:
                if httpx.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"dagserve run {target} was not ready within 60 s"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def _check_curl(text: str, base: str) -> int:
    """Send every ``$ curl`` of ``text`` to ``base``; the answer must be the line shown under it."""
    import httpx

    checked = 0
    for m in _CURL.finditer(text):
        path = "/" + m["url"].split("/", 1)[1] if "/" in m["url"] else "/"
        response = httpx.post(base + path, content=m["body"], headers={"content-type": "application/json"}, timeout=30)
        assert response.text == m["out"], f"curl {m['url']} answered {response.text!r}, the page shows {m['out']!r}"
        checked += 1
    return checked


@pytest.mark.http
def test_readme_curl_answers_as_shown(tmp_path: Path) -> None:
    """The README's curl against what ``make run`` serves (here on the local backend, no Ray)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "$(PY) -m dagserve run $(GRAPH)" in (ROOT / "Makefile").read_text(encoding="utf-8")
    with _dagserve_run("examples.quickstart:graph", tmp_path) as base:
        assert _check_curl(text, base) == 1


@pytest.mark.http
def test_getting_started_graph_serves_as_shown(tmp_path: Path) -> None:
    """Getting started: its first graph saved as reviews.py, served, answers the curl it shows."""
    text = (ROOT / "docs/getting-started.md").read_text(encoding="utf-8")
    first = next(b for b in blocks(text) if b.language == "python")
    (tmp_path / "reviews.py").write_text(first.code, encoding="utf-8")
    with _dagserve_run("reviews:graph", tmp_path) as base:
        assert _check_curl(text, base) == 1


# -- console blocks marked `tested`: commands run in a shell against a served graph ------------------


def console_commands(text: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` of every ```` ```console tested ```` block: a ``$ `` line
    is a command, the lines under it its output."""
    out: list[tuple[str, list[str]]] = []
    for block in blocks(text):
        if block.language != "console" or "tested" not in block.flags:
            continue
        for line in block.code.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif out:
                out[-1][1].append(line.rstrip())
    return out


def test_console_commands_are_read_with_their_output() -> None:
    text = "```console tested\n$ echo a\na\n$ true\n```\n```console\n$ not run\n```\n"
    assert console_commands(text) == [("echo a", ["a"]), ("true", [])]


@pytest.mark.http
def test_protocols_page_commands_answer_as_shown(tmp_path: Path) -> None:
    """docs/protocols.md: its sample file written, its curl calls (multipart, raw, base64 JSON, a PNG
    answer) sent by real curl to ``dagserve run examples.digits_png:graphs``, answering as shown."""
    import os
    import subprocess

    commands = console_commands((ROOT / "docs/protocols.md").read_text(encoding="utf-8"))
    assert sum("curl" in c for c, _ in commands) >= 4
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with _dagserve_run("examples.digits_png:graphs", tmp_path) as base:
        for command, expected in commands:
            command = command.replace("127.0.0.1:8000", base.removeprefix("http://")).replace("python ", f"{sys.executable} ", 1)
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{command!r} failed: {done.stderr}"
            assert done.stdout.rstrip("\n").splitlines() == expected, f"{command!r} printed {done.stdout!r}, the page shows {expected}"
    assert (tmp_path / "answer.png").read_bytes().startswith(b"\x89PNG")
