"""Model repositories for the tests: tiny versions whose answers say which version answered.

Version ``v`` of a model labels its classes ``red-v{v}``, ``green-v{v}``, ... (same weights), so
every top-1 label names the version that computed it, independently of the response's
``model_version``. ``ballast_mb`` adds a weight tensor that the graph really reads, so a session
holding that version costs that much memory (to see it return after an unload).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from harness.tiny_model import COLOUR_LABELS, build_model, tiny_card
from model_card import write_card


def version_labels(version: int, labels: list[str] = COLOUR_LABELS) -> list[str]:
    return [f"{label}-v{version}" for label in labels]


def write_version(
    repository: Path,
    name: str,
    version: int,
    *,
    ballast_mb: int = 0,
    labels: list[str] | None = None,
) -> Path:
    """``repository/name/version/model.onnx`` (+ model.json); staged in a hidden folder and
    renamed into place, as an operator should, so a rescan never sees half a model."""
    card = tiny_card(name=name, version=str(version), labels=labels or version_labels(version))
    model = build_model(card)
    if ballast_mb:
        add_ballast(model, ballast_mb)
    staging = repository / name / f".staging-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    path = staging / "model.onnx"
    onnx.save(model, path)
    write_card(card, path)
    target = repository / name / str(version)
    staging.rename(target)
    return target / "model.onnx"


def add_ballast(model: onnx.ModelProto, megabytes: int) -> None:
    """Make the graph gather one value (times 0) from a ``megabytes`` float tensor, at an index
    computed from the input, so ONNX Runtime can neither fold nor drop it."""
    graph = model.graph
    softmax = next(node for node in graph.node if node.op_type == "Softmax")
    logits = softmax.input[0]
    values = np.random.default_rng(0).random(megabytes * 1024 * 1024 // 4, dtype=np.float32)
    graph.initializer.extend(
        [numpy_helper.from_array(values, "ballast"), numpy_helper.from_array(np.float32(0), "ballast_zero")]
    )
    nodes = [
        helper.make_node("ReduceMean", ["means"], ["ballast_mean"], keepdims=0),
        helper.make_node("Mul", ["ballast_mean", "ballast_zero"], ["ballast_zeroed"]),
        helper.make_node("Cast", ["ballast_zeroed"], ["ballast_index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["ballast", "ballast_index"], ["ballast_value"], axis=0),
        helper.make_node("Mul", ["ballast_value", "ballast_zero"], ["ballast_term"]),
        helper.make_node("Add", [logits, "ballast_term"], ["logits_ballast"]),
    ]
    position = list(graph.node).index(softmax)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    softmax.input[0] = "logits_ballast"
    onnx.checker.check_model(model)


def truncate(path: Path) -> None:
    """Cut the ONNX file in half (its model.json's sha256 then disagrees too)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_mislabelled_version(repository: Path, name: str, version: int) -> Path:
    """A version whose card has 5 labels for a graph with 4 outputs."""
    card = tiny_card(name=name, version=str(version), labels=[*version_labels(version), "extra"])
    graph_card = tiny_card(name=name, version=str(version), labels=version_labels(version))
    model = build_model(graph_card)
    helper.set_model_props(model, {"model_card": card.to_metadata_json()})
    directory = repository / name / str(version)
    directory.mkdir(parents=True)
    path = directory / "model.onnx"
    onnx.save(model, path)
    write_card(card, path)
    return path
