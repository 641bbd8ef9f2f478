"""The OpenAI-compatible routes on the Ray backend (conftest.py's shared Ray): the official
``openai`` client against examples/qa_stream and tests/openai_graphs.py, every node a Serve
deployment; its cancellation stops the generator in its replica (tests/openai_checks.py, the
same checks as the local backend's in tests/http/test_openai_routes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import dagserve
from examples.qa_stream import openai_models

from .. import openai_checks as oc
from .. import openai_graphs as og
from ..background_server import BackgroundServer

pytestmark = [pytest.mark.ray, pytest.mark.http]

TOKEN = "sesame"


@pytest.fixture(scope="module")
def served(shared_ray: None) -> Iterator[tuple[dagserve.App, str]]:
    # Deployed together: one App, its graphs sharing a backend; the ingress serves each graph's model.
    with dagserve.deploy([*openai_models, og.slow, og.tuned], backend="ray", ready_timeout_s=180) as app:
        with BackgroundServer(dagserve.asgi_app(app, token=TOKEN)) as url:
            yield app, url


def test_the_openai_client_lists_chats_completes_and_is_refused(served: tuple[dagserve.App, str]) -> None:
    oc.check_conversation(served[1], TOKEN)


def test_the_openai_clients_cancellation_stops_the_generator_in_its_replica(
    served: tuple[dagserve.App, str], tmp_path: Any
) -> None:
    app, url = served
    oc.check_cancel(url, TOKEN, str(tmp_path / "steps.log"))
    assert all(graph.in_flight == 0 for graph in app.graphs.values())
