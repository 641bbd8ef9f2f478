"""Checks of the OpenAI routes with the official ``openai`` client (tests/clients/openai_client.py,
run by .venv-clients' Python against a real server), shared by the local and Ray tests."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from .stream_checks import wait_until_still
from .stream_graphs import steps_taken

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "tests" / "clients" / "openai_client.py"
#: The Python of the protocol clients' environment (scripts/setup.sh --test creates it).
CLIENT_PYTHON = ROOT / ".venv-clients" / "bin" / "python"


def run_script(*args: str, timeout_s: float = 240) -> str:
    """Run a script with the clients' Python (``args``: the script and its arguments); what it printed."""
    assert CLIENT_PYTHON.exists(), f"{CLIENT_PYTHON} is missing: run scripts/setup.sh --test to create .venv-clients"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    done = subprocess.run([str(CLIENT_PYTHON), *args], capture_output=True, text=True, timeout=timeout_s, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def run_client(*args: str) -> dict[str, Any]:
    """Run tests/clients/openai_client.py with ``args``; what it printed, as JSON."""
    return json.loads(run_script(str(CLIENT), *args).strip().splitlines()[-1])  # type: ignore[no-any-return]


def check_conversation(url: str, token: str) -> None:
    """Models listed, chat and completions whole and streamed, a multiplexed model, and refusals."""
    seen = run_client("conversation", url.rstrip("/") + "/v1", token)
    assert seen["models"] == ["base", "qa-stream", "slow"] and seen["model"] == "qa-stream"
    chat = seen["chat"]
    assert chat["object"] == "chat.completion" and chat["role"] == "assistant" and chat["finish_reason"] == "length"
    assert chat["content"].startswith("Bees make honey")
    assert chat["usage"]["completion_tokens"] == 10 and chat["usage"]["total_tokens"] == 10
    stream = seen["chat_stream"]
    assert stream["roles"] == ["assistant"] and len(stream["pieces"]) == 10  # one chunk per token
    assert "".join(stream["pieces"]) == chat["content"]  # the same question, the same answer
    assert stream["finish_reasons"] == ["length"] and len(stream["ids"]) == 1
    assert stream["usage"] == [chat["usage"]] and not stream["last_has_choices"]
    assert seen["completion"]["object"] == "text_completion" and seen["completion"]["text"]
    assert "".join(seen["completion_stream"]) == seen["completion"]["text"]
    assert seen["multiplexed"]["content"] == "[ft-bees] How do bees make honey?" and seen["multiplexed"]["model"] == "ft-bees"
    assert seen["multiplexed"]["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6,
                                            "completion_tokens_details": None, "prompt_tokens_details": None}
    unknown = seen["unknown_model"]
    assert (unknown["class"], unknown["status"], unknown["code"]) == ("NotFoundError", 404, "model_not_found")
    assert "gpt-5" in unknown["message"]
    for name, param in (("n", "n"), ("tools", "tools"), ("bad_value", "temperature")):
        refused = seen[name]
        assert (refused["class"], refused["status"], refused["type"], refused["param"]) == (
            "BadRequestError", 400, "invalid_request_error", param), refused
    for name in ("wrong_key", "wrong_key_chat"):
        assert (seen[name]["class"], seen[name]["status"], seen[name]["code"]) == ("AuthenticationError", 401, "invalid_api_key")


def check_cancel(url: str, token: str, log: str) -> None:
    """The client closes its stream after three chunks: the generator stops and its cleanup runs."""
    seen = run_client("cancel", url.rstrip("/") + "/v1", token, log)
    assert seen["seen"] == ["", "t0 ", "t1 "]  # the role chunk, then tokens
    end = time.monotonic() + 30
    while not os.path.exists(log + ".closed") and time.monotonic() < end:
        time.sleep(0.05)
    assert os.path.exists(log + ".closed"), f"the generator's cleanup did not run ({steps_taken(log)} steps)"
    stopped = wait_until_still(log)
    assert stopped < 1000, f"the generator went on after the client left: {stopped} steps"
