"""A graph as an OIP model (dagserve/oip/model.py): its tensors, the payload of a request's
tensors, the tensors of its output."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pytest
from pydantic import BaseModel

import dagserve
from dagserve.oip.model import signature
from tests import oip_graphs as og


def test_a_graphs_signature_maps_tensors_to_fields_and_back() -> None:
    sig = signature(dagserve.compile(og.tensors))
    assert sig.inputs is not None
    assert [f.metadata() for f in sig.inputs.values()] == [
        {"name": "pixels", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "name", "datatype": "BYTES", "shape": [1]},
        {"name": "scale", "datatype": "FP64", "shape": [1]},
        {"name": "tags", "datatype": "BYTES", "shape": [-1]},
    ]
    pixels = np.zeros((2, 4), np.float32)
    payload = sig.payload([
        ("pixels", "FP32", pixels),
        ("name", "BYTES", np.array([b"ada"], dtype=object)),
        ("tags", "BYTES", np.array([b"a", b"b"], dtype=object)),
    ])
    assert payload["name"] == "ada" and payload["tags"] == ["a", "b"] and payload["pixels"] is pixels
    with pytest.raises(dagserve.TensorError, match="The request lacks input 'pixels'"):
        sig.payload([("name", "BYTES", np.array([b"ada"], dtype=object))])
    with pytest.raises(dagserve.TensorError, match=r"Input 'name' has shape \[2\]; it takes one element"):
        sig.payload([("pixels", "FP32", pixels), ("name", "BYTES", np.array([b"a", b"b"], dtype=object))])
    with pytest.raises(dagserve.TensorError, match="Input 'name' takes text; its bytes are not UTF-8"):
        sig.payload([("pixels", "FP32", pixels), ("name", "BYTES", np.array([b"\xff"], dtype=object))])
    outputs = dict(sig.outputs_of({"sums": np.ones(2, np.float32), "greeting": "hi"}))
    assert outputs["greeting"].tolist() == ["hi"] and outputs["sums"].dtype == np.float32
    with pytest.raises(dagserve.TensorError, match="The model has no output 'nope'"):
        sig.outputs_of({"sums": 1}, ["nope"])


class Declared(BaseModel):
    x: Annotated[np.ndarray, dagserve.TensorSpec("INT32", [2])]


@dagserve.node
def double(req: Declared) -> Annotated[np.ndarray, dagserve.TensorSpec("INT64", [2])]:
    return req.x * 2


def test_a_declared_return_annotation_is_the_output_tensor() -> None:
    with dagserve.Input(schema=Declared) as inp:
        graph = dagserve.Graph(double(inp), name="double")
    sig = signature(dagserve.compile(graph))
    assert [f.metadata() for f in sig.outputs] == [{"name": "output", "datatype": "INT64", "shape": [2]}]
    ((name, array),) = sig.outputs_of(np.array([1, 2], np.int32))
    assert name == "output" and array.dtype == np.int64


def test_a_generator_nodes_items_are_its_outputs() -> None:
    sig = signature(dagserve.compile(og.counting))
    assert sig.single_output is None  # Iterator[dict[str, Any]]: named by each item's keys
    assert [name for name, _ in sig.outputs_of({"i": 1, "word": "w"})] == ["i", "word"]


@dagserve.node
def echo(payload: dict) -> dict:
    return payload


def test_a_graph_without_a_schema_takes_any_tensors_as_arrays() -> None:
    with dagserve.Input() as inp:
        graph = dagserve.Graph(echo(inp), name="echo_any")
    sig = signature(dagserve.compile(graph))
    assert sig.inputs is None and sig.outputs == ()
    array = np.arange(3)
    assert sig.payload([("anything", "INT64", array)]) == {"anything": array}
    with pytest.raises(dagserve.TensorError, match="Input 'a' is sent twice"):
        sig.payload([("a", "INT64", array), ("a", "INT64", array)])
