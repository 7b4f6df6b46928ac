"""Tiny ONNX classifiers that follow the artifact contract (docs/ARCHITECTURE.md), built in
milliseconds, for tests, smoke benchmarks and fault injection.

Tests need a real model file (a real graph, a real card, real ONNX Runtime) without PyTorch or
a minute of export, so this module builds one with ``onnx.helper``: the graph averages each
colour channel to a mean in [0, 1] and maps the three means to labels with a 3 x classes
matrix, ``softmax(means @ weights + bias)``. With the default colour weights a red image is
'red', a green one 'green', and so on, so a test can predict every answer
(:func:`expected_probabilities`).

Two options inject faults through the model alone, with no test hook in the server:
``poison`` fails inside ONNX Runtime for any batch holding an image whose top-left red value
is 255, and ``slow_matmuls`` adds a fixed cost per batch (about 1 ms each on one core).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model_card import (
    CARD_METADATA_KEY,
    Interpolation,
    ModelCard,
    Preprocessing,
    TensorSpec,
    write_card,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
COLOUR_LABELS = ["red", "green", "blue", "grey"]
# Channel means in [0, 1] -> scores; 'grey' wins when the channels are about equal.
COLOUR_WEIGHTS = np.array(
    [[20.0, -10.0, -10.0, 0.0], [-10.0, 20.0, -10.0, 0.0], [-10.0, -10.0, 20.0, 0.0]], dtype=np.float32
)
COLOUR_BIAS = np.array([0.0, 0.0, 0.0, 2.0], dtype=np.float32)
SLOW_MATRIX_SIZE = 384


def tiny_card(
    *,
    labels: Sequence[str] = COLOUR_LABELS,
    layout: Literal["NHWC", "NCHW"] = "NHWC",
    output_dtype: Literal["float32", "float16"] = "float32",
    resize_size: int = 40,
    crop_size: int = 32,
    interpolation: Interpolation = "bilinear",
    name: str = "tiny-rgb",
    version: str = "1.2.3",
    weights_source: str = "fixed weights (tests)",
) -> ModelCard:
    """The card of a tiny model: NHWC uint8 ``pixels`` (scaled in the graph) or, like the
    naive baseline's twin, NCHW float ``input`` normalised by the caller."""
    nhwc = layout == "NHWC"
    return ModelCard(
        name=name,
        version=version,
        architecture="channel-mean-linear",
        weights=weights_source,
        labels=list(labels),
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


def _channel_means(
    card: ModelCard,
) -> tuple[onnx.ValueInfoProto, list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Graph input and nodes that compute ``means`` [N, 3] in [0, 1] for either layout."""
    size, name = card.preprocessing.crop_size, card.input.name
    if card.input.layout == "NHWC":
        graph_input = helper.make_tensor_value_info(name, TensorProto.UINT8, ["N", size, size, 3])
        nodes = [
            helper.make_node("Cast", [name], ["x"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["x"], ["raw_means"], axes=[1, 2], keepdims=0),
            helper.make_node("Mul", ["raw_means", "scale"], ["means"]),
        ]
        return graph_input, nodes, [numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale")]
    graph_input = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3, size, size])
    # Undo the normalisation the caller applied, so both layouts give the same answer.
    nodes = [
        helper.make_node("ReduceMean", [name], ["norm_means"], axes=[2, 3], keepdims=0),
        helper.make_node("Mul", ["norm_means", "std"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mean"], ["means"]),
    ]
    inits = [numpy_helper.from_array(np.array(STD, np.float32), "std")]
    return graph_input, nodes, [*inits, numpy_helper.from_array(np.array(MEAN, np.float32), "mean")]


def _poison(pixels: str, logits: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """``logits + table[pixels[:, 0, 0, 0]]`` with a 255-entry table of zeros: a Gather index
    out of range, so ONNX Runtime itself fails, when an image's top-left red value is 255."""
    nodes = [
        helper.make_node("Slice", [pixels, "corner_start", "corner_end", "corner_axes"], ["corner"]),
        helper.make_node("Reshape", ["corner", "flat_shape"], ["corner_flat"]),
        helper.make_node("Cast", ["corner_flat"], ["corner_index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "corner_index"], ["picked"], axis=0),
        helper.make_node("Unsqueeze", ["picked", "axis1"], ["picked_col"]),
        helper.make_node("Add", [logits, "picked_col"], ["logits_poisoned"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, 0, 0], np.int64), "corner_start"),
        numpy_helper.from_array(np.array([1, 1, 1], np.int64), "corner_end"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "corner_axes"),
        numpy_helper.from_array(np.array([-1], np.int64), "flat_shape"),
        numpy_helper.from_array(np.zeros(255, np.float32), "table"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    return nodes, inits, "logits_poisoned"


def _slow(matmuls: int, logits: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """``matmuls`` chained 384x384 products per batch, scaled by the input's mean so that ONNX
    Runtime cannot fold them away; their sum times 0 joins the logits."""
    nodes = [
        helper.make_node("ReduceMean", ["means"], ["all_mean"], keepdims=0),
        helper.make_node("Mul", ["slow_m", "all_mean"], ["slow_0"]),
        *(helper.make_node("MatMul", [f"slow_{i}", "slow_m"], [f"slow_{i + 1}"]) for i in range(matmuls)),
        helper.make_node("ReduceSum", [f"slow_{matmuls}"], ["slow_sum"], keepdims=0),
        helper.make_node("Mul", ["slow_sum", "zero"], ["slow_zero"]),
        helper.make_node("Add", [logits, "slow_zero"], ["logits_slow"]),
    ]
    inits = [
        numpy_helper.from_array(np.full((SLOW_MATRIX_SIZE, SLOW_MATRIX_SIZE), 1e-3, np.float32), "slow_m"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    return nodes, inits, "logits_slow"


def build_model(
    card: ModelCard,
    weights: np.ndarray = COLOUR_WEIGHTS,
    bias: np.ndarray = COLOUR_BIAS,
    *,
    poison: bool = False,
    slow_matmuls: int = 0,
) -> onnx.ModelProto:
    """The graph ``card`` describes, ``softmax(channel means @ weights + bias)``, card in its metadata.

    ``weights`` is [3, classes] and ``bias`` [classes]; pass both when ``card`` has other labels.
    """
    classes = len(card.labels)
    if weights.shape != (3, classes) or bias.shape != (classes,):
        raise ValueError(f"weights {weights.shape} and bias {bias.shape} do not fit {classes} labels")
    if poison and card.input.layout != "NHWC":
        raise ValueError("poison reads a uint8 red value: it needs the NHWC input")
    graph_input, nodes, inits = _channel_means(card)
    nodes += [
        helper.make_node("MatMul", ["means", "W"], ["logits_nobias"]),
        helper.make_node("Add", ["logits_nobias", "B"], ["logits"]),
    ]
    inits += [
        numpy_helper.from_array(weights.astype(np.float32), "W"),
        numpy_helper.from_array(bias.astype(np.float32), "B"),
    ]
    logits = "logits"
    if poison:
        extra_nodes, extra_inits, logits = _poison(card.input.name, logits)
        nodes, inits = nodes + extra_nodes, inits + extra_inits
    if slow_matmuls:
        extra_nodes, extra_inits, logits = _slow(slow_matmuls, logits)
        nodes, inits = nodes + extra_nodes, inits + extra_inits
    float16 = card.output.dtype == "float16"
    softmax_out = "probs32" if float16 else card.output.name
    nodes.append(helper.make_node("Softmax", [logits], [softmax_out], axis=-1))
    if float16:
        nodes.append(helper.make_node("Cast", [softmax_out], [card.output.name], to=TensorProto.FLOAT16))
    out_type = TensorProto.FLOAT16 if float16 else TensorProto.FLOAT
    graph_output = helper.make_tensor_value_info(card.output.name, out_type, ["N", classes])
    graph = helper.make_graph(nodes, "tiny", [graph_input], [graph_output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {CARD_METADATA_KEY: card.to_metadata_json()})
    onnx.checker.check_model(model)
    return model


def write_model(
    directory: Path,
    card: ModelCard | None = None,
    weights: np.ndarray = COLOUR_WEIGHTS,
    bias: np.ndarray = COLOUR_BIAS,
    *,
    poison: bool = False,
    slow_matmuls: int = 0,
    with_card_file: bool = True,
) -> Path:
    """Write ``model.onnx`` (card in its metadata) and, unless told not to, ``model.json``
    beside it; return the ONNX path. ``with_card_file=False`` tests the metadata-only path."""
    card = card or tiny_card()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    onnx.save(build_model(card, weights, bias, poison=poison, slow_matmuls=slow_matmuls), path)
    if with_card_file:
        write_card(card, path)
    return path


def expected_probabilities(
    rgb_means: np.ndarray, weights: np.ndarray = COLOUR_WEIGHTS, bias: np.ndarray = COLOUR_BIAS
) -> np.ndarray:
    """What the model returns for images with these per-channel means in [0, 1]: the oracle
    the tests compare ONNX Runtime's answers with."""
    logits = rgb_means @ weights + bias
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))
