"""A tiny stand-in model for the smoke benchmark: the real artifact format, almost no compute.

It follows docs/ARCHITECTURE.md exactly (uint8 NHWC input ``pixels``, normalisation in the
graph, ``probabilities`` output, the model card in ``metadata_props`` and ``model.json``), with
real ImageNet preprocessing sizes (resize 256, crop 224), so the smoke run exercises the same
decode/preprocess/HTTP path as the real model; only the network is a global average pool and
one linear layer. Built with the ``onnx`` helpers: no PyTorch, seconds not minutes.

A float-input twin (``input``, float32 NCHW, normalised outside the graph) with the same
weights is what the naive baseline runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.inference.card import CARD_METADATA_KEY, ModelCard, Preprocessing, TensorSpec, write_card

NUM_CLASSES = 10
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
OPSET = 17


def _card(float_input: bool) -> ModelCard:
    return ModelCard(
        name="bench-tiny",
        version="0.0.1",
        architecture="global-average-pool + linear (benchmark smoke stand-in)",
        weights="random, seed 0",
        labels=[f"class_{index}" for index in range(NUM_CLASSES)],
        input=(
            TensorSpec(name="input", layout="NCHW", dtype="float32")
            if float_input
            else TensorSpec(name="pixels", layout="NHWC", dtype="uint8")
        ),
        output=TensorSpec(name="probabilities", layout="NC", dtype="float32"),
        preprocessing=Preprocessing(
            resize_size=256,
            crop_size=224,
            interpolation="bilinear",
            mean=MEAN,
            std=STD,
            normalization_in_graph=not float_input,
        ),
    )


def _graph(float_input: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(3, NUM_CLASSES)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(np.zeros(NUM_CLASSES, np.float32), "bias")
    initializers = [weight, bias]
    nodes = []
    if float_input:
        graph_input = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])
        nodes.append(helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0))
    else:
        graph_input = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 224, 224, 3])
        initializers += [
            numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
            numpy_helper.from_array(np.array(MEAN, np.float32), "mean"),
            numpy_helper.from_array(np.array(STD, np.float32), "std"),
        ]
        nodes += [
            helper.make_node("Cast", ["pixels"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["as_float", "scale"], ["scaled"]),
            helper.make_node("Sub", ["scaled", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["normalised"]),
            helper.make_node("ReduceMean", ["normalised"], ["pooled"], axes=[1, 2], keepdims=0),
        ]
    nodes += [
        helper.make_node("MatMul", ["pooled", "weight"], ["logits_nobias"]),
        helper.make_node("Add", ["logits_nobias", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", NUM_CLASSES])
    graph = helper.make_graph(nodes, "bench_tiny", [graph_input], [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def create_tiny_model(out_dir: Path, *, float_input: bool = False) -> Path:
    """Write ``model.onnx`` + ``model.json`` into ``out_dir``; return the ONNX path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _graph(float_input)
    card = _card(float_input)
    helper.set_model_props(model, {CARD_METADATA_KEY: card.to_metadata_json()})
    model_path = out_dir / "model.onnx"
    onnx.save(model, model_path)
    write_card(card, model_path)
    return model_path
