"""The digit ensemble graph: preprocess -> three classifiers in parallel -> vote -> review rule.

::

    input ─ preprocess ─┬─ LogisticModel ──────┐
                        ├─ NearestNeighbours ──┼─ vote ─ review
                        └─ NeuralNet (batched) ┘

Each classifier is trained at start-up, in its ``__init__`` (so once per replica), on the 8x8
digits data set that ships inside scikit-learn: no download. Training uses a fixed 80 % of the
images; :func:`holdout` returns the other 20 % as payloads, so callers see honest accuracy.

``NeuralNet`` declares two replicas, batching (up to 32 images per call) and a quarter of a GPU.
The local backend ignores GPU shares; on Ray the share is scheduled like a real one, so start Ray
with logical GPUs on a machine without any (``dagserve.deploy(graph, backend="ray", num_gpus=1)``).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

import dagserve

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "MIN_CONFIDENCE",
    "DigitImage",
    "LogisticModel",
    "NearestNeighbours",
    "NeuralNet",
    "graph",
    "holdout",
    "preprocess",
    "review",
    "training_data",
    "vote",
]

#: Answers whose averaged probability is below this go to a human.
MIN_CONFIDENCE = 0.8

Pixel = Annotated[float, Field(ge=0, le=16)]


class DigitImage(BaseModel):
    """The request: an 8x8 grey-level image, row by row, each pixel 0 (white) to 16 (black)."""

    pixels: list[Pixel] = Field(min_length=64, max_length=64)


@cache
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    # A fixed, stratified split: every replica trains on exactly the same images.
    split = train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)
    return tuple(split)  # type: ignore[return-value]


def training_data() -> tuple[np.ndarray, np.ndarray]:
    """Features scaled as :func:`preprocess` scales them, and their labels."""
    x_train, _, y_train, _ = _split()
    return x_train / 16.0, y_train


def holdout(n: int | None = None) -> list[tuple[dict[str, Any], int]]:
    """Up to ``n`` images none of the models trained on, as ``(payload, true digit)`` pairs."""
    _, x_test, _, y_test = _split()
    pairs = [({"pixels": [float(p) for p in row]}, int(label)) for row, label in zip(x_test, y_test, strict=True)]
    return pairs if n is None else pairs[:n]


# -- nodes ------------------------------------------------------------------------------------


@dagserve.node
def preprocess(pixels: list[float]) -> list[float]:
    """Business logic: scale grey levels to 0..1, the range the models were trained on."""
    return [p / 16.0 for p in pixels]


@dagserve.node
class LogisticModel:
    """A linear model: fast, well calibrated."""

    def __init__(self, c: float = 1.0) -> None:
        from sklearn.linear_model import LogisticRegression

        x, y = training_data()
        self.model = LogisticRegression(C=c, max_iter=500).fit(x, y)

    def __call__(self, features: list[float]) -> list[float]:
        return self.model.predict_proba([features])[0].tolist()  # type: ignore[no-any-return]


@dagserve.node
class NearestNeighbours:
    """k-NN: no training beyond storing the images; probabilities are neighbour shares."""

    def __init__(self, k: int = 5) -> None:
        from sklearn.neighbors import KNeighborsClassifier

        x, y = training_data()
        self.model = KNeighborsClassifier(n_neighbors=k).fit(x, y)

    def __call__(self, features: list[float]) -> list[float]:
        return self.model.predict_proba([features])[0].tolist()  # type: ignore[no-any-return]


@dagserve.node(num_replicas=2, max_batch_size=32, batch_wait_timeout_s=0.005, num_gpus=0.25)
class NeuralNet:
    """A small neural network, batched: one matrix product serves up to 32 concurrent requests.

    It stands in for the GPU model of a real ensemble, hence its quarter-GPU share.
    """

    def __init__(self, hidden: int = 64) -> None:
        from sklearn.neural_network import MLPClassifier

        x, y = training_data()
        self.model = MLPClassifier(
            hidden_layer_sizes=(hidden,), learning_rate_init=0.01, tol=1e-3, max_iter=500, random_state=0
        ).fit(x, y)

    async def __call__(self, batch: list[list[float]]) -> list[list[float]]:
        return self.model.predict_proba(batch).tolist()  # type: ignore[no-any-return]


@dagserve.node
def vote(probabilities: dict[str, list[float]]) -> dict[str, Any]:
    """Soft voting: average the three probability vectors; also report each model's own answer."""
    n = len(probabilities)
    mean = [sum(column) / n for column in zip(*probabilities.values(), strict=True)]
    digit = max(range(10), key=mean.__getitem__)
    votes = {model: max(range(10), key=p.__getitem__) for model, p in probabilities.items()}
    return {"digit": digit, "confidence": round(mean[digit], 4), "votes": votes}


@dagserve.node
def review(result: dict[str, Any], min_confidence: float) -> dict[str, Any]:
    """The business rule: a human checks answers the ensemble is unsure or split about."""
    reasons = []
    if result["confidence"] < min_confidence:
        reasons.append(f"confidence {result['confidence']:.2f} < {min_confidence}")
    if len(set(result["votes"].values())) > 1:
        reasons.append("models disagree")
    return {**result, "needs_review": bool(reasons), "reasons": reasons}


# -- the graph --------------------------------------------------------------------------------

with dagserve.Input(schema=DigitImage) as image:
    features = preprocess(image["pixels"])
    # Fan-out: the three models read the same features and run concurrently.
    probabilities = {
        "logistic": LogisticModel()(features),
        "knn": NearestNeighbours(k=5)(features),
        "neural_net": NeuralNet()(features),
    }
    answer = review(vote(probabilities), min_confidence=MIN_CONFIDENCE)

graph = dagserve.Graph(answer, name="digits", description="Digit recognition ensemble with a review rule")
