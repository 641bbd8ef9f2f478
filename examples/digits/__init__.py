"""Digit recognition ensemble: three scikit-learn classifiers vote, a business rule flags doubt.

Run it (trains the models, classifies held-out images, prints a report)::

    python -m examples.digits                  # in-process, local backend
    python -m examples.digits --backend ray    # a private local Ray that declares 1 logical GPU

Serve it over HTTP and call it::

    dagserve run examples.digits:graph         # local backend (it ignores GPU shares)
    python -m examples.digits --url http://127.0.0.1:8000

``NeuralNet`` asks for a quarter of a GPU per replica. The local backend ignores GPU shares; on Ray
the share is scheduled like a real one, so on a machine without a GPU the Ray must declare
logical GPUs: ``dagserve.deploy(graph, backend="ray", num_gpus=1)`` (what ``--backend ray`` does)
or a cluster started with ``ray start --head --num-gpus=1``. Without one, ``NeuralNet`` stays
pending and the deploy fails after ``ready_timeout_s`` with a ``DeployError`` naming it.

The graph lives in :mod:`examples.digits.graph`; see that module's docstring for its shape.
"""

from __future__ import annotations

from .graph import DigitImage, graph, holdout

__all__ = ["DigitImage", "graph", "holdout"]
