"""OpenAI models the OpenAI tests serve beside examples/qa_stream (tests/openai_checks.py).

* ``slow`` (chat): tokens until ``max_tokens``, ``extra["delay"]`` seconds apart; each step appends
  a byte to ``extra["log"]`` and the generator's cleanup writes ``<log>.closed`` (the tests see a
  client's cancellation stop it, across processes on Ray).
* ``base`` (chat, also every ``ft-*`` name): answers in one piece, naming the model the request
  asked for (one graph serving many fine-tunes), with the usage it counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import dagserve


@dagserve.node
async def slow_reply(request: dict[str, Any]) -> AsyncIterator[str]:
    log = request["extra"].get("log")
    try:
        for i in range(request["max_tokens"] or 20):
            if log:
                with open(log, "a") as f:
                    f.write("x")
            yield f"t{i} "
            await asyncio.sleep(request["extra"].get("delay", 0.02))
    finally:
        if log:
            with open(log + ".closed", "w") as f:
                f.write("closed")


@dagserve.node
def tuned_reply(request: dict[str, Any]) -> dict[str, Any]:
    text = request["messages"][-1]["content"]
    return {"content": f"[{request['model']}] {text}", "usage": {"prompt_tokens": len(text.split()), "completion_tokens": 1}}


with dagserve.Input() as _request:
    slow = dagserve.openai.chat(dagserve.Graph(slow_reply(_request), name="slow"), model="slow")

with dagserve.Input() as _request:
    tuned = dagserve.openai.chat(dagserve.Graph(tuned_reply(_request), name="tuned"), model="base", models=["ft-*"])
