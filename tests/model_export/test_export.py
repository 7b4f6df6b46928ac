"""ONNX export of the offline default: graph contract, card round trip, parity fp32 and fp16."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from model_card import CARD_METADATA_KEY, ModelCard, load_card, sha256_file
from model_export.cli import main
from model_export.data import create_eval_transform
from model_export.export import (
    FP16_MAP_TOLERANCE,
    FP16_TOLERANCE,
    FP32_MAP_TOLERANCE,
    FP32_TOLERANCE,
    ExportError,
    PixelsToProbabilities,
    check_parity,
    load_parity_images,
)
from model_export.models import create_model, lite0_preprocessing

CAT_CLASSES = {281, 282, 285}


@pytest.fixture(scope="module")
def default_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("default")
    assert main(["--threads", "1", "default", "--output-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def default_fp16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("default16")
    assert main(["--threads", "1", "default", "--output-dir", str(out), "--fp16"]) == 0
    return out


def _run(model_dir: Path, images: list[Image.Image]) -> tuple[np.ndarray, ModelCard]:
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    card = load_card(model_dir / "model.onnx")
    transform = create_eval_transform(card.preprocessing)
    pixels = np.stack([transform(image).permute(1, 2, 0).numpy() for image in images])
    return session.run(None, {card.input.name: pixels})[0], card


def test_graph_contract(default_fp32: Path) -> None:
    model = onnx.load(str(default_fp32 / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    (graph_input,) = model.graph.input
    # The probabilities first, as ever; the class activation maps and their classes after them.
    graph_output, maps_output, classes_output = model.graph.output
    assert graph_input.name == "pixels"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    in_dims = graph_input.type.tensor_type.shape.dim
    assert in_dims[0].dim_param != "" and [d.dim_value for d in in_dims[1:]] == [224, 224, 3]
    assert graph_output.name == "probabilities"
    assert graph_output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    out_dims = graph_output.type.tensor_type.shape.dim
    assert out_dims[0].dim_param == in_dims[0].dim_param and out_dims[1].dim_value == 1000
    assert (maps_output.name, classes_output.name) == ("cam", "cam_classes")
    assert maps_output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert classes_output.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_value for d in maps_output.type.tensor_type.shape.dim[1:]] == [5, 7, 7]


def test_card_round_trip(default_fp32: Path) -> None:
    model = onnx.load(str(default_fp32 / "model.onnx"))
    metadata = {p.key: p.value for p in model.metadata_props}
    inside = load_card(default_fp32 / "model.onnx")
    beside = json.loads((default_fp32 / "model.json").read_text())
    assert inside.sha256 == beside["sha256"] == sha256_file(default_fp32 / "model.onnx")
    assert ModelCard.model_validate(beside) == inside
    assert "sha256" not in json.loads(metadata[CARD_METADATA_KEY])
    assert json.loads(metadata[CARD_METADATA_KEY]) == json.loads(inside.to_metadata_json())
    assert inside.preprocessing == lite0_preprocessing()
    assert (inside.preprocessing.resize_size, inside.preprocessing.crop_size) == (256, 224)
    assert inside.preprocessing.mean == pytest.approx((127 / 255,) * 3)
    assert inside.preprocessing.std == pytest.approx((128 / 255,) * 3)
    assert (inside.input.name, inside.input.layout, inside.input.dtype) == ("pixels", "NHWC", "uint8")
    assert (inside.labels[281], inside.num_classes, inside.precision) == ("tabby", 1000, "fp32")
    assert {"torch", "onnx", "onnxruntime", "timm"} <= set(inside.exporter)
    assert inside.metrics["export_parity"]["max_abs_prob_diff"] <= FP32_TOLERANCE
    explanation = inside.explanation
    assert explanation is not None
    assert (explanation.method, explanation.maps_output, explanation.classes_output) == (
        "cam",
        "cam",
        "cam_classes",
    )
    assert (explanation.top_k, explanation.height, explanation.width, explanation.dtype) == (
        5,
        7,
        7,
        "float32",
    )
    assert inside.metrics["export_parity"]["max_abs_map_diff"] <= FP32_MAP_TOLERANCE == 1e-4


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_real_photos_through_onnx(default_fp32: Path, photos: dict[str, Image.Image], batch: int) -> None:
    images = [photos["chelsea"], photos["coffee"]] * 3
    probabilities, _ = _run(default_fp32, images[:batch])
    assert probabilities.shape == (batch, 1000)
    assert np.allclose(probabilities.sum(1), 1.0, atol=1e-5)
    assert int(probabilities[0].argmax()) in CAT_CLASSES
    if batch > 1:
        assert int(probabilities[1].argmax()) == 967


def test_fp16_export_runs_on_cpu_within_tolerance(
    default_fp32: Path, default_fp16: Path, photos: dict[str, Image.Image]
) -> None:
    images = [photos["chelsea"], photos["coffee"]]
    p32, _ = _run(default_fp32, images)
    p16, card = _run(default_fp16, images)
    assert p16.dtype == np.float16 and card.output.dtype == "float16" and card.precision == "fp16"
    assert float(np.abs(p16.astype(np.float32) - p32).max()) <= FP16_TOLERANCE
    assert (p16.argmax(1) == p32.argmax(1)).all()
    assert card.metrics["export_parity"]["max_abs_prob_diff"] <= FP16_TOLERANCE
    assert card.explanation is not None and card.explanation.dtype == "float16"
    assert card.metrics["export_parity"]["max_abs_map_diff"] <= FP16_MAP_TOLERANCE
    assert (default_fp16 / "model.onnx").stat().st_size < 0.6 * (default_fp32 / "model.onnx").stat().st_size


def test_parity_check_fails_past_tolerance(default_fp32: Path) -> None:
    # A different model than the one exported: the check must notice.
    created = create_model("simple_cnn", num_classes=1000, crop_size=224, resize_size=256)
    wrapper = PixelsToProbabilities(created.model.eval(), lite0_preprocessing()).eval()
    images = load_parity_images(lite0_preprocessing())
    with pytest.raises(ExportError) as info:
        check_parity(wrapper, default_fp32 / "model.onnx", images, FP32_TOLERANCE, (1, len(images)))
    assert str(info.value).startswith(
        "ONNX top-1 differs from PyTorch on "
    ) or "above the tolerance 0.0001" in str(info.value)


def test_parity_batch_is_real_and_varied() -> None:
    images = load_parity_images(lite0_preprocessing())
    assert images.shape == (8, 224, 224, 3) and images.dtype == np.uint8
    assert len({img.tobytes() for img in images}) == 8
    assert torch.from_numpy(images).float().std() > 30


def test_default_maps_match_pytorchs_cam_of_the_module(
    default_fp32: Path, photos: dict[str, Image.Image]
) -> None:
    from model_export.data import mean_std_tensors, normalize_uint8
    from model_export.explain import reference_maps
    from model_export.models import create_lite0_imagenet

    card = load_card(default_fp32 / "model.onnx")
    transform = create_eval_transform(card.preprocessing)
    pixels = np.stack([transform(photos[name]).permute(1, 2, 0).numpy() for name in ("chelsea", "coffee")])
    session = ort.InferenceSession(str(default_fp32 / "model.onnx"), providers=["CPUExecutionProvider"])
    probabilities, maps, classes = session.run(None, {"pixels": pixels})
    assert (classes[:, 0] == probabilities.argmax(1)).all() and int(classes[0, 0]) in CAT_CLASSES
    mean, std = mean_std_tensors(card.preprocessing)
    x = normalize_uint8(torch.from_numpy(pixels).permute(0, 3, 1, 2), mean, std)
    expected = reference_maps(create_lite0_imagenet(), "cam", x, torch.from_numpy(classes))
    assert float(np.abs(maps - expected.numpy()).max()) <= FP32_MAP_TOLERANCE
