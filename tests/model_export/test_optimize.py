"""Variants and the accuracy gate on the tiny colour model: a good calibration passes, a broken
one is refused, and the variant's card carries what the gate measured; quantization-aware
training of a small CNN trained here repairs what a broken calibration breaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from harness.tiny_model import tiny_card, write_model
from model_card import load_card
from model_export.cli import main
from model_export.data import load_split
from model_export.gate import GateThresholds, compare, judge
from model_export.optimize import OptimizeConfig, optimize_model
from model_export.photos import CropSet, labelled_crops
from model_export.qat import QatConfig

SIZE = 32  # tiny_card()'s crop


def colour_crops(count: int, seed: int, *, labelled: bool = False) -> CropSet:
    """Flat images of random colours, each with a little noise: the tiny model's whole world."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(count, 1, 1, 3))
    noise = rng.integers(-8, 9, size=(count, SIZE, SIZE, 3))
    pixels = np.clip(colours + noise, 0, 255).astype(np.uint8)
    return CropSet(pixels, f"random colours (seed {seed})", ())


def grey_crops(count: int) -> CropSet:
    """A broken calibration set: every image the same mid grey."""
    return CropSet(np.full((count, SIZE, SIZE, 3), 128, dtype=np.uint8), "one grey image, repeated", ())


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("fp32"), tiny_card())


def make_int8(source: Path, output_dir: Path, calibration: CropSet) -> Path:
    config = OptimizeConfig(
        source=source, output_dir=output_dir, precisions=("int8",), sensitivity=False, measure_speed=False
    )
    [result] = optimize_model(config, calibration, colour_crops(16, seed=2), colour_crops(400, seed=3))
    assert result.model_path is not None
    return result.model_path


def test_a_good_calibration_passes_and_the_card_says_what_was_measured(
    tiny_fp32: Path, tmp_path: Path
) -> None:
    path = make_int8(tiny_fp32, tmp_path, colour_crops(64, seed=1))
    card = load_card(path)
    assert (card.precision, card.execution_provider, card.name) == ("int8", "openvino", "tiny-rgb-int8")
    assert card.variant is not None and card.variant.base_sha256 == load_card(tiny_fp32).sha256
    gate = card.variant.gate
    assert gate.passed, gate.failures
    assert gate.figures.images == 400 and gate.figures.top1_agreement_all >= 0.97
    assert gate.measured_with == "OpenVINO CPU"
    assert card.variant.calibration == {"source": "random colours (seed 1)", "crops": 64, "photos": []}
    assert card.gate_passed


def test_the_gate_refuses_a_variant_made_with_a_broken_calibration(tiny_fp32: Path, tmp_path: Path) -> None:
    card = load_card(make_int8(tiny_fp32, tmp_path, grey_crops(64)))
    assert card.variant is not None
    gate = card.variant.gate
    assert not gate.passed and not card.gate_passed
    assert gate.figures.top1_agreement_all < 0.9
    assert any(failure.startswith("top-1 agreement on all images") for failure in gate.failures)


def test_a_variant_is_not_optimized_again(tiny_fp32: Path, tmp_path: Path) -> None:
    int8 = make_int8(tiny_fp32, tmp_path / "a", colour_crops(32, seed=1))
    with pytest.raises(RuntimeError, match="is a int8 variant: optimize its fp32 model"):
        make_int8(int8, tmp_path / "b", colour_crops(32, seed=1))


def test_gate_figures_on_known_probabilities() -> None:
    reference = np.array([[0.70, 0.20, 0.10], [0.50, 0.49, 0.01], [0.1, 0.3, 0.6], [0.6, 0.3, 0.1]])
    variant = np.array([[0.69, 0.21, 0.10], [0.48, 0.51, 0.01], [0.1, 0.3, 0.6], [0.3, 0.6, 0.1]])
    labels = np.array([0, 1, 2, 0])
    figures = compare(reference, variant, labels)
    # image 1 is a near-tie (margin 0.01): left out of the confident agreement
    assert (figures.confident_images, figures.top1_agreement_confident) == (3, pytest.approx(2 / 3))
    assert figures.top1_agreement_all == pytest.approx(0.5)
    assert figures.max_abs_prob_diff == pytest.approx(0.3)
    assert (figures.accuracy_fp32, figures.accuracy_variant) == (0.75, 0.75)
    assert figures.accuracy_difference == 0.0
    assert figures.accuracy_difference_ci95 is not None
    low, high = figures.accuracy_difference_ci95
    assert low < 0 < high
    gate = judge(figures, GateThresholds(), images={}, measured_with="test")
    assert not gate.passed and len(gate.failures) == 2  # confident and all; top-5 of 3 classes is whole


def test_an_accuracy_drop_past_the_threshold_fails_even_with_agreement_kept() -> None:
    reference = np.tile([[0.9, 0.05, 0.05]], (1000, 1))
    labels = np.zeros(1000, dtype=int)
    variant = reference.copy()
    variant[:10] = [0.05, 0.9, 0.05]  # 1% of the answers change, all of them from right to wrong
    figures = compare(reference, variant, labels)
    gate = judge(figures, GateThresholds(top1_agreement_confident=0.98), images={}, measured_with="test")
    assert figures.accuracy_difference == pytest.approx(-0.01)
    assert not gate.passed and gate.failures[-1].startswith(
        "accuracy 0.9900 vs fp32 1.0000: a drop of 0.0100"
    )


@pytest.fixture(scope="module")
def cnn_fp32(cnn_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn_fp32")
    assert (
        main(["--threads", "1", "export", "--checkpoint", str(cnn_run / "best.pt"), "--output-dir", str(out)])
        == 0
    )
    return out / "model.onnx"


def test_quantization_aware_training_repairs_what_a_broken_calibration_breaks(
    cnn_run: Path, cnn_fp32: Path, tmp_path: Path
) -> None:
    """Both int8 variants start from the same grey calibration images: post-training int8 keeps
    their useless activation ranges; two epochs of quantization-aware training learn better ones."""
    card = load_card(cnn_fp32)
    split_path = cnn_run / "split.json"
    _, tuning, gate = labelled_crops(
        split_path, card.preprocessing, card.labels, calibration_images=1, tuning_images=16
    )
    config = OptimizeConfig(
        source=cnn_fp32,
        output_dir=tmp_path,
        precisions=("int8",),
        sensitivity=False,
        measure_speed=False,
        qat=QatConfig(cnn_run / "best.pt", epochs=2, lr=1e-3, workers=0),
        split=load_split(split_path),
    )
    ptq, qat = optimize_model(config, grey_crops(32), tuning, gate)
    assert (ptq.label, qat.label) == ("int8", "int8-qat")
    assert ptq.card is not None and ptq.card.variant is not None and not ptq.card.gate_passed
    assert (
        qat.card is not None
        and qat.card.variant is not None
        and qat.model_path == tmp_path / "int8-qat" / "model.onnx"
    )
    before, after = ptq.card.variant.gate.figures, qat.card.variant.gate.figures
    assert before.top1_agreement_all < 0.5 and after.top1_agreement_all > before.top1_agreement_all + 0.4
    # a retrained model is judged on its accuracy: its agreement is recorded, not a threshold
    assert "top1_agreement_all_min" not in qat.card.variant.gate.thresholds
    assert all(f.startswith("accuracy ") for f in qat.card.variant.gate.failures)
    assert (
        after.images == len(gate) and after.accuracy_variant is not None and after.accuracy_fp32 is not None
    )
    assert after.accuracy_variant > 0.8 and after.accuracy_fp32 > 0.9
    assert (qat.card.precision, qat.card.execution_provider, qat.card.explanation) == (
        "int8",
        "openvino",
        None,
    )
    assert qat.card.variant.method.startswith("NNCF quantization-aware training")
    assert qat.card.variant.calibration == {"source": "one grey image, repeated", "crops": 32, "photos": []}
    assert len(qat.card.variant.speed["quantization_aware_epochs"]) == 2
    assert qat.card.variant.gate.measured_with == "OpenVINO CPU"
    graph = onnx.load(str(qat.model_path))
    weights = {
        t.name for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1
    }
    # every convolution and dense layer reads int8 weights (the exporter's float ones are folded)
    assert len(weights) == 5 and {n.op_type for n in graph.graph.node} >= {
        "QuantizeLinear",
        "DequantizeLinear",
    }


def test_a_retrained_variant_is_judged_on_its_accuracy_not_its_agreement() -> None:
    reference = np.tile([[0.6, 0.3, 0.1]], (100, 1))
    labels = np.array([1] * 20 + [0] * 80)
    better = reference.copy()
    better[:20] = [0.3, 0.6, 0.1]  # 20% of the answers change, each from wrong to right
    retrained = GateThresholds(judge_agreement=False)
    figures = compare(reference, better, labels)
    assert judge(figures, GateThresholds(), images={}, measured_with="test").failures == [
        "top-1 agreement on confident images 0.8000 < 0.995",
        "top-1 agreement on all images 0.8000 < 0.97",
    ]
    gate = judge(figures, retrained, images={}, measured_with="test")
    assert gate.passed and "top1_agreement_confident_min" not in gate.thresholds
    worse = judge(
        compare(reference, better, np.zeros(100, dtype=int)), retrained, images={}, measured_with="t"
    )
    assert not worse.passed and worse.failures[0].startswith("accuracy 0.8000 vs fp32 1.0000")
    unlabelled = judge(compare(reference, better), retrained, images={}, measured_with="test")
    assert not unlabelled.passed and "no labels" in unlabelled.failures[0]
