"""The official ``openai`` Python client against a dagserve server, as a user runs it.

Run with ``.venv-clients/bin/python`` (not dagserve's environment), by tests/openai_checks.py::

    python tests/clients/openai_client.py conversation BASE_URL API_KEY
    python tests/clients/openai_client.py cancel BASE_URL API_KEY LOG_FILE

Prints one JSON object: what the client saw.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import openai
from openai import OpenAI

QUESTION = [{"role": "user", "content": "How do bees make honey?"}]


def refusal(call: Any) -> dict[str, Any]:
    """The error the client raised for ``call()``: its class, status and OpenAI fields."""
    try:
        call()
    except openai.APIStatusError as exc:
        return {"class": type(exc).__name__, "status": exc.status_code, "type": exc.type, "code": exc.code,
                "param": exc.param, "message": exc.message}
    return {"class": None}


def conversation(base_url: str, key: str) -> dict[str, Any]:
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
    out: dict[str, Any] = {"models": sorted(m.id for m in client.models.list())}
    out["model"] = client.models.retrieve("qa-stream").id

    whole = client.chat.completions.create(model="qa-stream", messages=QUESTION, max_tokens=10)
    out["chat"] = {"content": whole.choices[0].message.content, "role": whole.choices[0].message.role,
                   "finish_reason": whole.choices[0].finish_reason, "object": whole.object,
                   "usage": whole.usage.model_dump() if whole.usage else None}

    chunks = list(client.chat.completions.create(
        model="qa-stream", messages=QUESTION, max_tokens=10, stream=True, stream_options={"include_usage": True}
    ))
    out["chat_stream"] = {
        "roles": [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role],
        "pieces": [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content],
        "finish_reasons": [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason],
        "usage": [c.usage.model_dump() for c in chunks if c.usage is not None],
        "last_has_choices": bool(chunks[-1].choices),
        "ids": sorted({c.id for c in chunks}),
    }

    text = client.completions.create(model="qa-stream", prompt="Why does the moon turn red?", max_tokens=8)
    out["completion"] = {"text": text.choices[0].text, "finish_reason": text.choices[0].finish_reason, "object": text.object}
    pieces = [c.choices[0].text for c in client.completions.create(model="qa-stream", prompt="Why does the moon turn red?",
                                                                    max_tokens=8, stream=True)]
    out["completion_stream"] = pieces

    tuned = client.chat.completions.create(model="ft-bees", messages=QUESTION)
    out["multiplexed"] = {"content": tuned.choices[0].message.content, "model": tuned.model,
                          "usage": tuned.usage.model_dump() if tuned.usage else None}

    out["unknown_model"] = refusal(lambda: client.chat.completions.create(model="gpt-5", messages=QUESTION))
    out["n"] = refusal(lambda: client.chat.completions.create(model="qa-stream", messages=QUESTION, n=2))
    out["tools"] = refusal(lambda: client.chat.completions.create(
        model="qa-stream", messages=QUESTION,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
    ))
    out["bad_value"] = refusal(lambda: client.chat.completions.create(model="qa-stream", messages=QUESTION, temperature=7))
    wrong = OpenAI(base_url=base_url, api_key=key + "-wrong", max_retries=0, timeout=60)
    out["wrong_key"] = refusal(lambda: wrong.models.list())
    out["wrong_key_chat"] = refusal(lambda: wrong.chat.completions.create(model="qa-stream", messages=QUESTION))
    return out


def cancel(base_url: str, key: str, log: str) -> dict[str, Any]:
    """Read three chunks of a long stream, then close it (the client's own cancellation)."""
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
    stream = client.chat.completions.create(
        model="slow", messages=QUESTION, stream=True, max_tokens=100000, extra_body={"log": log}
    )
    seen = []
    for chunk in stream:
        seen.append(chunk.choices[0].delta.content)
        if len(seen) == 3:
            break
    stream.close()
    return {"seen": seen}


def main(argv: list[str]) -> int:
    scenario, base_url, key, *rest = argv
    result = conversation(base_url, key) if scenario == "conversation" else cancel(base_url, key, *rest)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
