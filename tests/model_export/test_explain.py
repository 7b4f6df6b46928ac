"""Class activation maps in the exported graph: which heads explain, and parity with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from model_card import load_card
from model_export.explain import (
    ClassActivationMaps,
    ExplainError,
    SimpleCnnGradCam,
    create_explainer,
    find_cam_layers,
    reference_maps,
)
from model_export.export import FP32_MAP_TOLERANCE, _map_difference, export_model, load_parity_images
from model_export.models import create_model


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, 3, 64, 64)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "mobilenet_v2"])
def test_cam_is_the_logit_spread_over_the_grid(arch: str, inputs: torch.Tensor) -> None:
    model = create_model(arch, num_classes=7, weights="none", crop_size=64).model.eval()
    layers = find_cam_layers(model, inputs)
    captured: list[torch.Tensor] = []
    handle = layers.features.register_forward_hook(lambda _m, _a, out: captured.append(out))
    with torch.no_grad():
        logits = model(inputs)
    handle.remove()
    raw = torch.einsum("kc,nchw->nkhw", layers.linear.weight.detach(), captured[0])
    # Zhou et al.: the map's mean over the grid plus the bias is the class's logit.
    assert torch.allclose(raw.mean(dim=(2, 3)) + layers.linear.bias.detach(), logits, atol=1e-4)


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "convnext_tiny", "densenet121"])
def test_heads_that_are_not_pooling_and_linear_are_refused(arch: str, inputs: torch.Tensor) -> None:
    model = create_model(arch, num_classes=7, weights="none", crop_size=64).model
    with pytest.raises(ExplainError, match="not the global average of a feature map"):
        create_explainer(model, inputs)


def test_grad_cam_closed_form_is_autograds_grad_cam(inputs: torch.Tensor) -> None:
    model = create_model("simple_cnn", num_classes=6, crop_size=64).model.eval()
    explainer = create_explainer(model, inputs)
    assert isinstance(explainer, SimpleCnnGradCam) and explainer.method == "grad-cam"
    with torch.no_grad():
        logits, maps, classes = explainer(inputs)
        assert torch.equal(logits, model(inputs))
    assert maps.shape == (4, 5, 8, 8) and classes.shape == (4, 5)
    assert torch.equal(classes, logits.topk(5).indices)
    expected = reference_maps(model, "grad-cam", inputs, classes)
    assert float((maps - expected).abs().max()) <= 1e-5
    # each map normalised: its peak is 1, or it is flat (a class no cell argues for: all 0)
    peaks = maps.amax(dim=(2, 3))
    assert bool(((peaks - 1).abs() < 1e-6).logical_or(peaks == 0).all()) and bool((peaks == 1).any())


def test_simple_cnn_exports_grad_cam_within_parity(tmp_path: Path) -> None:
    created = create_model("simple_cnn", num_classes=6, crop_size=64)
    labels = [f"class{i}" for i in range(6)]
    result = export_model(
        created.model,
        output_dir=tmp_path,
        name="simple",
        version="1",
        architecture="simple_cnn",
        weights="random",
        labels=labels,
        preprocessing=created.preprocessing,
    )
    card = load_card(result.model_path)
    assert card.explanation is not None
    assert (card.explanation.method, card.explanation.top_k) == ("grad-cam", 5)
    assert (card.explanation.height, card.explanation.width) == (8, 8)
    assert card.metrics["export_parity"]["max_abs_map_diff"] <= FP32_MAP_TOLERANCE
    graph = onnx.load(str(result.model_path))
    assert [o.name for o in graph.graph.output] == ["probabilities", "cam", "cam_classes"]

    # Independently of the exporter's own check: ONNX Runtime's maps against autograd's.
    pixels = load_parity_images(card.preprocessing)
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    probabilities, maps, classes = session.run(None, {"pixels": pixels})
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    expected = reference_maps(created.model.eval(), "grad-cam", x, torch.from_numpy(classes))
    assert float(np.abs(maps - expected.numpy()).max()) <= FP32_MAP_TOLERANCE
    assert (classes[:, 0] == probabilities.argmax(1)).all()


class MlpHead(nn.Module):
    """Pooling, then two dense layers: a head no class activation map describes exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.pool(self.features(x)))
        return logits


def test_a_model_that_cannot_explain_exports_no_maps(tmp_path: Path) -> None:
    preprocessing = create_model("simple_cnn", num_classes=3, crop_size=32).preprocessing
    result = export_model(
        MlpHead(),
        output_dir=tmp_path,
        name="mlp",
        version="1",
        architecture="mlp head",
        weights="random",
        labels=["a", "b", "c"],
        preprocessing=preprocessing,
    )
    assert result.card.explanation is None and load_card(result.model_path).explanation is None
    assert [o.name for o in onnx.load(str(result.model_path)).graph.output] == ["probabilities"]
    assert "max_abs_map_diff" not in result.card.metrics["export_parity"]


def test_the_map_parity_check_sees_wrong_maps(inputs: torch.Tensor) -> None:
    model = create_model("resnet18", num_classes=7, weights="none", crop_size=64).model.eval()
    explainer = create_explainer(model, inputs)
    assert isinstance(explainer, ClassActivationMaps)

    class Wrapper(nn.Module):
        def model_input(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with torch.no_grad():
        logits, maps, classes = explainer(inputs)
    probabilities = logits.softmax(-1).numpy()
    args = (Wrapper(), explainer, inputs.numpy(), probabilities)
    assert _map_difference(*args, maps.numpy(), classes.numpy()) <= 1e-6
    assert _map_difference(*args, maps.flip(-1).numpy(), classes.numpy()) > 0.1
    with pytest.raises(Exception, match="not its own top classes"):
        _map_difference(*args, maps.numpy(), classes.flip(-1).numpy())
    explainer.close()
