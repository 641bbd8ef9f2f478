"""Unit tests of dagserve/http/errors.py's shapes: dagserve's own, OIP's under /v2, OpenAI's under /v1/."""

from __future__ import annotations

from dagserve import InputValidationError, NodeError
from dagserve.http.errors import error_from_exception, error_shape, openai_error
from dagserve.openai import ModelNotFoundError, ParameterError


def test_the_shape_of_a_route_is_read_below_the_mount_point() -> None:
    assert error_shape("/ml/v1/models", "/ml") == "openai"
    assert error_shape("/v1/chat/completions") == "openai"
    assert error_shape("/ml/v2/models/g/infer", "/ml") == "oip" and error_shape("/v2") == "oip"
    assert error_shape("/qa") == error_shape("/v1") == error_shape("/ml/qa", "/ml") == "dagserve"


def test_only_the_v1_routes_answer_in_openais_shape() -> None:
    exc = ParameterError("n=2 ...", param="n", code="c")
    status, body, _ = error_from_exception(exc, request_id="r")
    assert status == 400 and body["error"]["type"] == "ParameterError" and body["error"]["request_id"] == "r"
    status, body, _ = error_from_exception(exc, request_id="r", shape=error_shape("/v1/chat/completions"))
    assert body == {"error": {"message": "n=2 ...", "type": "invalid_request_error", "param": "n", "code": "c"}}


def test_openai_errors_keep_what_each_exception_says() -> None:
    def shaped(exc: Exception) -> dict[str, object]:
        status, body, _ = error_from_exception(exc, request_id="r")
        return openai_error(status, body, exc)["error"]  # type: ignore[no-any-return]

    assert shaped(ModelNotFoundError("no 'm'")) == {
        "message": "no 'm'", "type": "invalid_request_error", "param": None, "code": "model_not_found"
    }
    invalid = shaped(InputValidationError("bad", [{"loc": ["messages", 0], "msg": "m", "type": "t"}]))
    assert invalid["param"] == "messages.0" and invalid["type"] == "invalid_request_error"
    failed = shaped(NodeError("Node 'gen' raised ValueError: boom", node="gen", error_type="ValueError"))
    assert failed == {"message": "Node 'gen' raised ValueError: boom", "type": "server_error", "param": None, "code": None}
    hidden = shaped(RuntimeError("secret detail"))
    assert "secret" not in hidden["message"] and hidden["type"] == "server_error"  # the log has it, not the answer
