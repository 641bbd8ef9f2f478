"""The README's example graph: a model node, a batched model node, a business-logic node,
a fan-out and a switch.

Serve it with ``make run`` (or ``dagserve run examples.quickstart:graph``), then::

    curl -s 127.0.0.1:8000/ -H 'content-type: application/json' \
         -d '{"text": "What a GREAT film", "lang": "en"}'
"""

from __future__ import annotations

from pydantic import BaseModel

import dagserve


class Review(BaseModel):
    text: str
    lang: str = "en"


@dagserve.node
def clean(text: str) -> str:
    """Business logic: normalise the text."""
    return " ".join(text.lower().split())


@dagserve.node(num_replicas=2)
class Sentiment:
    """A model node: its 'weights' (a word list) load once per replica."""

    def __init__(self, positive: list[str], negative: list[str]) -> None:
        self.positive, self.negative = set(positive), set(negative)

    def __call__(self, text: str) -> float:
        words = text.split()
        score = sum(w in self.positive for w in words) - sum(w in self.negative for w in words)
        return max(-1.0, min(1.0, score / 2))


@dagserve.node(max_batch_size=16, batch_wait_timeout_s=0.005)
class Toxicity:
    """A batched model node: receives a list of texts, returns a list of scores."""

    def __init__(self, blocklist: list[str]) -> None:
        self.blocklist = set(blocklist)

    async def __call__(self, texts: list[str]) -> list[float]:
        return [float(any(w in self.blocklist for w in t.split())) for t in texts]


@dagserve.node
def respond(sentiment: float, toxic: float) -> dict[str, object]:
    label = "positive" if sentiment > 0 else "negative" if sentiment < 0 else "neutral"
    return {"label": label, "score": sentiment, "flagged": toxic > 0}


@dagserve.node
def not_supported(text: str) -> dict[str, object]:
    return {"label": "unsupported-language", "score": 0.0, "flagged": False}


sentiment = Sentiment(positive=["good", "great", "love"], negative=["bad", "awful", "boring"])
toxicity = Toxicity(blocklist=["idiot", "stupid"])

with dagserve.Input(schema=Review) as review:
    text = clean(review["text"])
    # Fan-out: both models read the cleaned text and run concurrently.
    english = respond(sentiment(text), toxicity(text))
    # Switch: only the chosen branch runs.
    result = dagserve.switch(review["lang"], {"en": english}, default=not_supported(text))

graph = dagserve.Graph(result, name="reviews")

if __name__ == "__main__":
    with dagserve.deploy(graph, backend="local") as app:
        print(app.call({"text": "What a GREAT film", "lang": "en"}))
        print(app.call({"text": "Quel film", "lang": "fr"}))
