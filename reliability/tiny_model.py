"""Tiny ONNX models with a valid model card, built with ``onnx.helper`` in milliseconds.

They follow the artifact contract (docs/ARCHITECTURE.md): input ``pixels`` uint8 NHWC,
output ``probabilities`` float32 [N, classes], the card in ``metadata_props`` and in
``model.json`` beside the file. The "poison" variant fails inside ONNX Runtime for any
batch holding an image whose top-left red value is 255 (a Gather index out of range):
a fault injected through the model alone, with no test hook in the server.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.inference.card import CARD_METADATA_KEY, ModelCard, Preprocessing, TensorSpec, write_card

LABELS = ["red", "green", "blue", "black", "white", "grey"]


def tiny_card(resize_size: int = 40, crop_size: int = 32, name: str = "tiny") -> ModelCard:
    return ModelCard(
        name=name,
        version="0.0.1",
        architecture="mean-colour",
        weights="none: softmax of the mean colour",
        labels=list(LABELS),
        input=TensorSpec(name="pixels", layout="NHWC", dtype="uint8"),
        output=TensorSpec(name="probabilities", layout="NC", dtype="float32"),
        preprocessing=Preprocessing(
            resize_size=resize_size, crop_size=crop_size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
        ),
    )


def _slow_branch(matmuls: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """``matmuls`` chained 384x384 matrix products per batch, scaled by the input's mean so
    that ONNX Runtime cannot fold them away; their sum times 0 joins the logits."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["x_all_mean"], keepdims=0),
        helper.make_node("Mul", ["slow_m", "x_all_mean"], ["slow_0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_m"], [f"slow_{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_{matmuls}"], ["slow_sum"], keepdims=0),
        helper.make_node("Mul", ["slow_sum", "zero"], ["slow_zero"]),
        helper.make_node("Add", ["logits", "slow_zero"], ["logits_slow"]),
    ]
    inits = [
        numpy_helper.from_array(np.full((384, 384), 1e-3, dtype=np.float32), "slow_m"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    return nodes, inits, "logits_slow"


def _graph(crop_size: int, poison: bool, slow_matmuls: int = 0) -> onnx.GraphProto:
    """probabilities = softmax(10 * [r, g, b, 0, 0, 0] / 255), r, g, b the mean colour
    (+ 0 * a Gather that can fail)."""
    nodes = [
        helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x", "axes12"], ["mean"], keepdims=0),
        helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
    ]
    weights = np.zeros((3, len(LABELS)), dtype=np.float32)
    weights[[0, 1, 2], [0, 1, 2]] = 10.0 / 255.0
    inits = [
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes12"),
        numpy_helper.from_array(weights, "weights"),
    ]
    logits = "logits"
    if poison:
        # idx = pixels[:, 0, 0, 0] as int64; Gather(table[255], idx) raises when idx == 255.
        nodes += [
            helper.make_node("Slice", ["pixels", "s_start", "s_end", "s_axes"], ["corner"]),
            helper.make_node("Reshape", ["corner", "flat_shape"], ["corner_flat"]),
            helper.make_node("Cast", ["corner_flat"], ["idx"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "idx"], ["picked"], axis=0),
            helper.make_node("Unsqueeze", ["picked", "axis1"], ["picked_col"]),
            helper.make_node("Add", ["logits", "picked_col"], ["logits_poisoned"]),
        ]
        inits += [
            numpy_helper.from_array(np.array([0, 0, 0], dtype=np.int64), "s_start"),
            numpy_helper.from_array(np.array([1, 1, 1], dtype=np.int64), "s_end"),
            numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "s_axes"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat_shape"),
            numpy_helper.from_array(np.zeros(255, dtype=np.float32), "table"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ]
        logits = "logits_poisoned"
    if slow_matmuls:
        slow_nodes, slow_inits, slow_out = _slow_branch(slow_matmuls)
        slow_nodes[-1].input[0] = logits
        nodes += slow_nodes
        inits += slow_inits
        logits = slow_out
    nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=1))
    return helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", crop_size, crop_size, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(LABELS)])],
        initializer=inits,
    )


def build_tiny_model(
    out_dir: Path, *, poison: bool = False, crop_size: int = 32, slow_matmuls: int = 0
) -> Path:
    """Write ``model.onnx`` and ``model.json`` into ``out_dir``; return the ONNX path.

    ``slow_matmuls`` adds a fixed cost per batch (about 1 ms each on one core), for tests
    that need a server with a small, known capacity.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    card = tiny_card(resize_size=crop_size + 8, crop_size=crop_size, name="tiny-poison" if poison else "tiny")
    model = helper.make_model(
        _graph(crop_size, poison, slow_matmuls), opset_imports=[helper.make_opsetid("", 18)], ir_version=8
    )
    helper.set_model_props(model, {CARD_METADATA_KEY: card.to_metadata_json()})
    onnx.checker.check_model(model)
    path = out_dir / "model.onnx"
    onnx.save(model, path)
    write_card(card, path)
    return path
