"""TensorSpec (dagserve/graph/tensors.py): checked when built, and as a pydantic field."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pytest
from pydantic import BaseModel

import dagserve


def test_a_spec_is_checked_when_built() -> None:
    spec = dagserve.TensorSpec("fp32", [-1, 4])
    assert spec.datatype == "FP32" and spec.shape == (-1, 4)
    assert spec.matches((7, 4)) and not spec.matches((7, 3)) and not spec.matches((4,))
    with pytest.raises(dagserve.GraphError, match="TensorSpec datatype 'FLOAT' is not an OIP datatype"):
        dagserve.TensorSpec("FLOAT", [1])
    with pytest.raises(dagserve.GraphError, match="may hold only sizes >= 0 and -1"):
        dagserve.TensorSpec("FP32", [-2])
    with pytest.raises(dagserve.GraphError, match="TensorSpec shape must be a list of ints"):
        dagserve.TensorSpec("FP32", "4")


class Req(BaseModel):
    pixels: Annotated[np.ndarray, dagserve.TensorSpec("FP32", [-1, 2])]


def test_a_spec_field_validates_lists_and_arrays() -> None:
    req = Req.model_validate({"pixels": [[1, 2], [3, 4]]})
    assert isinstance(req.pixels, np.ndarray) and req.pixels.dtype == np.float32 and req.pixels.shape == (2, 2)
    assert Req.model_validate({"pixels": np.zeros((1, 2), np.float32)}).pixels.shape == (1, 2)
    with pytest.raises(ValueError, match=r"'pixels' has shape \[3\]; it takes shape \[-1, 2\]"):
        Req.model_validate({"pixels": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"'pixels' is a tensor of float64 \(FP64\); it takes FP32"):
        Req.model_validate({"pixels": np.zeros((1, 2))})
    schema = Req.model_json_schema()["properties"]["pixels"]
    assert schema["type"] == "array" and schema["items"] == {"type": "array", "items": {"type": "number"}}
    assert Req(pixels=np.ones((1, 2), np.float32)).model_dump(mode="json") == {"pixels": [[1.0, 1.0]]}


def test_reserved_graph_names_are_refused_when_built() -> None:
    @dagserve.node
    def echo(x: int) -> int:
        return x

    for name, route in [("v1", "OpenAI"), ("v2", "Open Inference Protocol"), ("jobs", "job routes")]:
        with dagserve.Input() as inp, pytest.raises(dagserve.GraphError, match=f"Graph name '{name}' is reserved: .*{route}"):
            dagserve.Graph(echo(inp), name=name)
