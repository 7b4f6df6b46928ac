"""Tiny real ONNX classifiers built with onnx.helper (no torch): milliseconds to build and run.

The model averages each colour channel over the image and maps the three means to class
scores with fixed weights, so a red image is 'red', a green one 'green', and so on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.inference.card import CARD_METADATA_KEY, ModelCard, Preprocessing, TensorSpec, write_card

LABELS = ["red", "green", "blue", "grey"]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _weights() -> tuple[np.ndarray, np.ndarray]:
    # Channel means in [0, 1] -> scores; 'grey' wins when the channels are about equal.
    weights = np.array(
        [[20.0, -10.0, -10.0, 0.0], [-10.0, 20.0, -10.0, 0.0], [-10.0, -10.0, 20.0, 0.0]], dtype=np.float32
    )
    bias = np.array([0.0, 0.0, 0.0, 2.0], dtype=np.float32)
    return weights, bias


def make_card(
    layout: str = "NHWC",
    output_dtype: str = "float32",
    resize_size: int = 40,
    crop_size: int = 32,
    interpolation: str = "bilinear",
    name: str = "tiny-rgb",
) -> ModelCard:
    nhwc = layout == "NHWC"
    return ModelCard(
        name=name,
        version="1.2.3",
        architecture="channel-mean-linear",
        weights="fixed weights (tests)",
        labels=LABELS,
        input=TensorSpec(
            name="pixels" if nhwc else "input", layout=layout, dtype="uint8" if nhwc else "float32"
        ),
        output=TensorSpec(name="probabilities", layout="NC", dtype=output_dtype),
        preprocessing=Preprocessing(
            resize_size=resize_size,
            crop_size=crop_size,
            interpolation=interpolation,
            mean=MEAN,
            std=STD,
            normalization_in_graph=nhwc,
        ),
        precision="fp16" if output_dtype == "float16" else "fp32",
    )


def build_model(card: ModelCard) -> onnx.ModelProto:
    """The graph for ``card``: uint8 NHWC (scaled in graph) or normalised float NCHW input."""
    size = card.preprocessing.crop_size
    weights, bias = _weights()
    nodes = []
    inits = [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")]
    if card.input.layout == "NHWC":
        graph_input = helper.make_tensor_value_info(card.input.name, TensorProto.UINT8, ["N", size, size, 3])
        inits.append(numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"))
        nodes += [
            helper.make_node("Cast", [card.input.name], ["x"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["x"], ["sum_hw"], axes=[1, 2], keepdims=0),
            helper.make_node("Mul", ["sum_hw", "scale"], ["means"]),
        ]
    else:
        graph_input = helper.make_tensor_value_info(card.input.name, TensorProto.FLOAT, ["N", 3, size, size])
        # Undo the normalisation the server applied, so both variants give the same answer.
        inits += [
            numpy_helper.from_array(np.array(STD, dtype=np.float32), "std"),
            numpy_helper.from_array(np.array(MEAN, dtype=np.float32), "mean"),
        ]
        nodes += [
            helper.make_node("ReduceMean", [card.input.name], ["norm_means"], axes=[2, 3], keepdims=0),
            helper.make_node("Mul", ["norm_means", "std"], ["scaled"]),
            helper.make_node("Add", ["scaled", "mean"], ["means"]),
        ]
    nodes += [
        helper.make_node("MatMul", ["means", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits"]),
    ]
    out_type = TensorProto.FLOAT16 if card.output.dtype == "float16" else TensorProto.FLOAT
    if card.output.dtype == "float16":
        nodes += [
            helper.make_node("Softmax", ["logits"], ["probs32"], axis=-1),
            helper.make_node("Cast", ["probs32"], [card.output.name], to=TensorProto.FLOAT16),
        ]
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], [card.output.name], axis=-1))
    graph_output = helper.make_tensor_value_info(card.output.name, out_type, ["N", len(card.labels)])
    graph = helper.make_graph(nodes, "tiny", [graph_input], [graph_output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {CARD_METADATA_KEY: card.to_metadata_json()})
    onnx.checker.check_model(model)
    return model


def write_model(directory: Path, card: ModelCard | None = None, with_card_file: bool = True) -> Path:
    """Write model.onnx (card in its metadata) and, by default, model.json beside it."""
    card = card or make_card()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    onnx.save(build_model(card), path)
    if with_card_file:
        write_card(card, path)
    return path


def expected_probabilities(rgb_means: np.ndarray) -> np.ndarray:
    """What the tiny model returns for images with these per-channel means in [0, 1]."""
    weights, bias = _weights()
    logits = rgb_means @ weights + bias
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)
