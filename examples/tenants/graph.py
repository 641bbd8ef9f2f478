"""One digit classifier per customer, chosen per request: a multiplexed node.

::

    input ─ pixels ──────────┐
          └ customer ─ model_id ─ CustomerModels (2 replicas x 3 models) ─ answer

Every customer has its own scikit-learn classifier, trained at start-up on its own slice of the
8x8 digits data set (it ships inside scikit-learn: no download) and kept in a model store (here
a dict of weights; in production a bucket or a registry). ``CustomerModels`` holds at most three
customers' models per replica: its ``@dagserve.multiplexed`` loader builds a customer's model from
the store on demand, keeps the hot ones and drops the least recently used. Each request names its
customer in the payload (or in the ``x-dagserve-model-id`` header) and goes to a replica that
already holds that customer's model.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

import dagserve

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CUSTOMERS", "CustomerModels", "DigitRequest", "graph", "holdout", "model_store"]

#: The customers; each one's classifier trains on every len(CUSTOMERS)-th training image.
CUSTOMERS = ("acme", "globex", "initech", "umbrella", "hooli", "stark")

Pixel = Annotated[float, Field(ge=0, le=16)]


class DigitRequest(BaseModel):
    """An 8x8 grey-level image (0..16 per pixel) and, optionally, whose model reads it (else the
    ``x-dagserve-model-id`` header says)."""

    pixels: list[Pixel] = Field(min_length=64, max_length=64)
    customer: str | None = None


@cache
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    split = train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)
    return tuple(split)  # type: ignore[return-value]


@cache
def model_store() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each customer's trained weights (coefficients, intercepts), trained once per process."""
    from sklearn.linear_model import LogisticRegression

    x_train, _, y_train, _ = _split()
    store = {}
    for k, customer in enumerate(CUSTOMERS):
        x, y = x_train[k :: len(CUSTOMERS)] / 16.0, y_train[k :: len(CUSTOMERS)]
        fitted = LogisticRegression(max_iter=1000).fit(x, y)
        store[customer] = (fitted.coef_, fitted.intercept_)
    return store


def holdout(n: int | None = None) -> list[tuple[dict[str, Any], int]]:
    """Up to ``n`` images no model trained on, as ``(payload, true digit)`` pairs, each for one
    customer in turn."""
    _, x_test, _, y_test = _split()
    pairs = [
        ({"pixels": [float(p) for p in row], "customer": CUSTOMERS[i % len(CUSTOMERS)]}, int(label))
        for i, (row, label) in enumerate(zip(x_test, y_test, strict=True))
    ]
    return pairs if n is None else pairs[:n]


@dagserve.node(num_replicas=2)
class CustomerModels:
    """Many customers' classifiers behind one node; each replica holds three at most."""

    def __init__(self) -> None:
        self.store = model_store()  # at start-up: the weights every replica can load from

    @dagserve.multiplexed(max_models_per_replica=3)
    def load(self, customer: str) -> Any:
        """Build ``customer``'s classifier from its stored weights (a 404 for an unknown one)."""
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        if customer not in self.store:
            raise dagserve.HTTPError(404, f"No model for customer {customer!r}; customers: {', '.join(CUSTOMERS)}.")
        model = LogisticRegression()
        model.coef_, model.intercept_ = self.store[customer]
        model.classes_ = np.arange(10)
        return model

    def __call__(self, pixels: list[float]) -> dict[str, Any]:
        customer = dagserve.model_id()
        probabilities = self.load(customer).predict_proba([[p / 16.0 for p in pixels]])[0]
        digit = int(probabilities.argmax())
        return {"customer": customer, "digit": digit, "confidence": round(float(probabilities[digit]), 3)}


with dagserve.Input(schema=DigitRequest) as inp:
    graph = dagserve.Graph(CustomerModels()(inp["pixels"], model_id=inp["customer"]), name="tenants")
