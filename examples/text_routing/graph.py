"""Text pipeline with routing: detect the language, switch to that language's model, post-process.

::

    input ─ normalize ─ detect_language ─ switch(language)
                                            ├─ "en": split 90/10 ─ sentiment_en (v1) | sentiment_en_v2 (canary)
                                            ├─ "de": sentiment_de
                                            ├─ "fr": sentiment_fr
                                            ├─ "es": sentiment_es
                                            └─ default: unsupported
                                          ─ postprocess

Only the chosen branch runs: a German review never touches the English models. English traffic
is split: 90 % to the current model (naive Bayes over word counts, ``v1``) and 10 % to a new
version being tried out (logistic regression over word and word-pair TF-IDF, ``v2``). Every
answer says which model produced it in ``model_version``; the route counts show the split (the
``route`` of a :class:`dagserve.RequestContext`, and ``dagserve_route_total`` in the metrics).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from pydantic import BaseModel, Field

import dagserve

from .data import LANGUAGES, STOP_WORDS, TRAINING

__all__ = ["CANARY_SHARE", "Review", "Sentiment", "detect_language", "graph", "normalize", "postprocess", "unsupported"]

#: Share of English traffic the new model version receives.
CANARY_SHARE = 0.10

_WORD = re.compile(r"[^\W\d_]+")


class Review(BaseModel):
    """The request: a short review in English, German, French or Spanish."""

    text: str = Field(min_length=1, max_length=5000)


@dagserve.node
def normalize(text: str) -> str:
    """Business logic: one Unicode form, single spaces."""
    return " ".join(unicodedata.normalize("NFC", text).split())


@dagserve.node
def detect_language(text: str) -> str:
    """Count each language's stop words; the most frequent wins, "unknown" when none occur."""
    words = _WORD.findall(text.lower())
    counts = {lang: sum(w in STOP_WORDS[lang] for w in words) for lang in LANGUAGES}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] > 0 else "unknown"


@dagserve.node
class Sentiment:
    """A per-language sentiment model, trained at start-up on the embedded sentences.

    ``version="v1"``: multinomial naive Bayes over word counts. ``version="v2"``: logistic
    regression over word and word-pair TF-IDF (the candidate under test).
    """

    def __init__(self, lang: str, version: str = "v1") -> None:
        from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.naive_bayes import MultinomialNB
        from sklearn.pipeline import make_pipeline

        if version == "v1":
            self.model = make_pipeline(CountVectorizer(strip_accents="unicode"), MultinomialNB())
        elif version == "v2":
            vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode")
            self.model = make_pipeline(vectorizer, LogisticRegression(C=10.0))
        else:
            raise ValueError(f"unknown model version {version!r}; use 'v1' or 'v2'")
        sentences, labels = zip(*TRAINING[lang], strict=True)
        self.model.fit(list(sentences), list(labels))
        self.version = f"{lang}-{version}"

    def __call__(self, text: str) -> dict[str, Any]:
        positive = float(self.model.predict_proba([text])[0][1])
        return {"positive": positive, "model_version": self.version}


@dagserve.node
def unsupported(language: str) -> dict[str, Any]:
    """The switch's default: no model for this language, so no sentiment."""
    return {"positive": None, "model_version": None}


@dagserve.node
def postprocess(language: str, prediction: dict[str, Any]) -> dict[str, Any]:
    """Business logic: a label, and a review flag for answers close to the fence."""
    positive = prediction["positive"]
    if positive is None:
        return {"language": language, "sentiment": "unsupported", "score": None, "model_version": None,
                "needs_review": False}
    label = "positive" if positive >= 0.5 else "negative"
    return {
        "language": language,
        "sentiment": label,
        "score": round(positive, 3),
        "model_version": prediction["model_version"],
        "needs_review": 0.35 < positive < 0.65,
    }


# -- the graph --------------------------------------------------------------------------------

english = Sentiment("en").options(name="sentiment_en")
english_v2 = Sentiment("en", version="v2").options(name="sentiment_en_v2")
models = {lang: Sentiment(lang).options(name=f"sentiment_{lang}") for lang in ("de", "fr", "es")}

with dagserve.Input(schema=Review) as review:
    text = normalize(review["text"])
    language = detect_language(text)
    # Canary: 10 % of English requests go to the new version, chosen at random per request.
    english_answer = dagserve.split(
        {"stable": english(text), "canary": english_v2(text)},
        {"stable": 1 - CANARY_SHARE, "canary": CANARY_SHARE},
        name="english_canary",
    )
    prediction = dagserve.switch(
        language,
        {"en": english_answer, **{lang: model(text) for lang, model in models.items()}},
        default=unsupported(language),
        name="language",
    )
    result = postprocess(language, prediction)

graph = dagserve.Graph(result, name="reviews_by_language", description="Sentiment per language, with a canary")
