"""Question answering that streams its answer: retrieve, rerank, generate token by token.

::

    input ─ Retriever.search ─ Reranker.rerank ─ Generator.generate ─ output (a stream of tokens)
      └──────────────────────────┴────────────────────┘

* :class:`Retriever` (a model): TF-IDF (scikit-learn) over :data:`~.corpus.PASSAGES`, the
  ``CANDIDATES`` passages closest to the question.
* :class:`Reranker` (a model): orders the candidates by how many of the question's content words
  each holds, the TF-IDF score breaking ties; keeps the best ``k``.
* :class:`Generator` (a model whose method is an async generator): a word-level Markov chain
  trained on the corpus at start-up. It starts from the best passage and walks the chain,
  preferring the words of the retrieved passages, yielding one token at a time.

Retrieval and reranking run as usual; the stream starts once the generator has its inputs.

The same pipeline is served as an OpenAI model, ``qa-stream`` (docs/openai.md): :data:`chat`
answers ``POST /v1/chat/completions`` (the last user message is the question) and
:data:`completion` ``POST /v1/completions`` (the prompt is); ``dagserve run
examples.qa_stream:openai_models`` serves both, and any OpenAI client can call them.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, Field

import dagserve

from .corpus import PASSAGES

__all__ = [
    "Generator",
    "Question",
    "Reranker",
    "Retriever",
    "answer",
    "chat",
    "completion",
    "graph",
    "openai_models",
    "question_of",
]

#: Passages the retriever hands the reranker.
CANDIDATES = 6
_WORD = re.compile(r"[a-z]+")
_STOP = frozenset(
    "a an and are as at be by do does for from how in is it its of on or so that the their they this to "
    "what when where which while who why with you your".split()
)


class Question(BaseModel):
    """The request: a question, how many passages ground the answer, how many tokens at most."""

    question: str = Field(min_length=1, max_length=500)
    k: int = Field(default=2, ge=1, le=CANDIDATES)
    max_tokens: int = Field(default=40, ge=1, le=200)


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


@dagserve.node
class Retriever:
    """TF-IDF over the corpus, built once per replica."""

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform(PASSAGES)

    def search(self, q: Question) -> list[dict[str, Any]]:
        scores = (self.matrix @ self.vectorizer.transform([q.question]).T).toarray().ravel()
        best = scores.argsort()[::-1][:CANDIDATES]
        return [{"id": int(i), "text": PASSAGES[i], "score": float(scores[i])} for i in best]


@dagserve.node
class Reranker:
    """Content-word overlap with the question first, the retriever's score second."""

    def rerank(self, q: Question, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        words = _content_words(q.question)
        ranked = sorted(candidates, key=lambda c: (len(words & _content_words(c["text"])), c["score"]), reverse=True)
        return ranked[: q.k]


@dagserve.node
class Generator:
    """A word-level Markov chain (two words of context) trained on the corpus at start-up."""

    def __init__(self, token_delay_s: float = 0.01, finish_reasons: bool = False) -> None:
        self.delay = token_delay_s  # a real model's time per token, roughly
        # As an OpenAI model: the token that uses up max_tokens says so ({"finish_reason": "length"}).
        self.finish_reasons = finish_reasons
        self.chain: dict[tuple[str, str], list[str]] = defaultdict(list)
        for passage in PASSAGES:
            words = passage.split()
            for a, b, c in zip(words, words[1:], words[2:], strict=False):
                self.chain[(a, b)].append(c)

    async def generate(self, q: Question, passages: list[dict[str, Any]]) -> AsyncIterator[Any]:
        """The answer, one token at a time (a word and its trailing space)."""
        rng = random.Random(q.question)  # the same question, the same answer
        grounding = set().union(*(p["text"].split() for p in passages)) if passages else set()
        words = passages[0]["text"].split()[:2] if passages else ["I", "do"]
        for w in words:
            yield w + " "
        for _ in range(q.max_tokens - len(words)):
            choices = self.chain.get((words[-2], words[-1]))
            if not choices:
                break
            grounded = [c for c in choices if c in grounding]
            word = rng.choice(grounded or choices)
            words.append(word)
            await asyncio.sleep(self.delay)
            if self.finish_reasons and len(words) == q.max_tokens:
                yield {"content": word + " ", "finish_reason": "length"}
                break
            yield word + " "
            if word.endswith(".") and len(words) >= 12:
                break


@dagserve.node
def question_of(request: dict[str, Any]) -> Question:
    """An OpenAI request as the pipeline's question: the last user message of a chat, or a
    completion's prompt; ``max_tokens`` as asked (at most 200)."""
    if "messages" in request:
        said = [m.get("content") for m in request["messages"] if m["role"] == "user"]
        text = said[-1] if said else ""
        if isinstance(text, list):  # content parts: keep the text ones
            text = " ".join(p.get("text", "") for p in text if p.get("type") == "text")
    else:
        text = request["prompt"]
    text = (text or "").strip()[:500]
    if not text:
        raise dagserve.HTTPError(400, "Ask a question: the last user message (or the prompt) has no text.")
    return Question(question=text, max_tokens=min(request.get("max_tokens") or 40, 200))


def answer(question: Any, *, finish_reasons: bool = False) -> Any:
    """The pipeline on a question node: retrieve, rerank, generate (a stream of tokens; with
    ``finish_reasons``, the last one a dict saying ``"length"`` when it used up ``max_tokens``)."""
    candidates = Retriever().search(question)
    passages = Reranker().rerank(question, candidates)
    return Generator(finish_reasons=finish_reasons).generate(question, passages)


with dagserve.Input(schema=Question) as question:
    graph = dagserve.Graph(
        answer(question),
        name="qa_stream",
        description="Answers a question from a small corpus; the answer streams token by token.",
    )

# The same pipeline as the OpenAI model "qa-stream", for chat and for completions (docs/openai.md).
with dagserve.Input() as request:
    tokens = answer(question_of(request), finish_reasons=True)
    chat = dagserve.openai.chat(dagserve.Graph(tokens, name="qa_chat"), model="qa-stream")
    completion = dagserve.openai.completions(dagserve.Graph(tokens, name="qa_complete"), model="qa-stream")
#: Both, for ``dagserve run examples.qa_stream:openai_models``.
openai_models = [chat, completion]
