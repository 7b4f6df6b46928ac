"""The card contract: one loader, the embedded card is the truth, model.json must agree with it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from harness.tiny_model import tiny_card, write_model
from model_card import (
    CARD_METADATA_KEY,
    AccuracyGate,
    CardError,
    GateFigures,
    ModelCard,
    Variant,
    load_card,
    sha256_file,
    write_card,
)
from model_card.card import first_difference
from model_card.onnx_metadata import MetadataError, read_onnx_metadata

REPO_ROOT = Path(__file__).resolve().parents[2]


LABELS = ["cat", "dog", "bird"]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    weights, bias = 10 * np.eye(3, dtype=np.float32), np.zeros(3, np.float32)
    return write_model(tmp_path / "m", tiny_card(labels=LABELS), weights, bias)


def _edit_copy(model: Path, **changes: object) -> None:
    card_file = model.parent / "model.json"
    data = json.loads(card_file.read_text())
    data.update(changes)
    card_file.write_text(json.dumps(data, indent=2))


def test_metadata_reader_agrees_with_onnx(model: Path) -> None:
    proto = onnx.load(str(model))
    onnx.helper.set_model_props(
        proto, {CARD_METADATA_KEY: tiny_card().to_metadata_json(), "author": "ünïcode ✓", "empty": ""}
    )
    proto.doc_string = "x" * 100_000  # a long field before the metadata must be skipped, not parsed
    onnx.save(proto, str(model))
    expected = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert read_onnx_metadata(model) == expected
    assert set(expected) == {CARD_METADATA_KEY, "author", "empty"}


def test_metadata_reader_refuses_a_truncated_file(model: Path, tmp_path: Path) -> None:
    data = model.read_bytes()
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(data[: len(data) - 5])
    with pytest.raises(MetadataError):
        read_onnx_metadata(truncated)


def test_the_embedded_card_with_the_files_sha256(model: Path) -> None:
    card = load_card(model)
    assert card.labels == LABELS
    assert card.sha256 == sha256_file(model)
    (model.parent / "model.json").unlink()
    assert load_card(model) == card  # no copy: the same card, sha256 computed


def test_a_faithful_copy_is_accepted(model: Path) -> None:
    assert json.loads((model.parent / "model.json").read_text())["sha256"] == load_card(model).sha256


def test_an_edited_copy_is_refused_naming_both_files_and_the_field(model: Path) -> None:
    _edit_copy(model, labels=["cat", "wolf", "bird"])
    with pytest.raises(CardError) as error:
        load_card(model)
    message = str(error.value)
    assert str(model.parent / "model.json") in message and str(model) in message
    assert (
        "'labels[1]'" in message and "'wolf' in model.json" in message and "'dog' in the ONNX file" in message
    )


def test_a_copy_with_another_files_sha256_is_refused(model: Path) -> None:
    _edit_copy(model, sha256="0" * 64)
    with pytest.raises(CardError, match="do not belong together"):
        load_card(model)


def test_a_copy_without_sha256_is_still_compared(model: Path) -> None:
    _edit_copy(
        model, sha256=None, preprocessing={**load_card(model).preprocessing.model_dump(), "crop_size": 8}
    )
    with pytest.raises(CardError, match=r"'preprocessing\.crop_size': 8 in model\.json, 32 in the ONNX file"):
        load_card(model)


def test_a_file_without_an_embedded_card_is_refused(model: Path) -> None:
    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.save(proto, str(model))
    (model.parent / "model.json").unlink()
    with pytest.raises(CardError, match="has no 'model_card' in its metadata"):
        load_card(model)


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\xff" * 64])
def test_garbage_is_refused_with_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(CardError, match=r"model\.onnx"):
        load_card(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="does not exist"):
        load_card(tmp_path / "model.onnx")


def test_write_card_then_load_round_trips(model: Path) -> None:
    card = tiny_card(labels=LABELS)
    write_card(card, model)
    assert load_card(model).model_copy(update={"sha256": None}) == ModelCard.model_validate(card.model_dump())


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({"x": 1}, {"x": 1}, None),
        ({"x": {"y": [1, 2]}}, {"x": {"y": [1, 3]}}, ("x.y[1]", 2, 3)),
        ({"x": [1]}, {"x": [1, 2]}, ("x (length)", 1, 2)),
        ({"x": 1}, {"x": 1, "z": 2}, ("z", None, 2)),
    ],
)
def test_first_difference(a: object, b: object, expected: object) -> None:
    assert first_difference(a, b) == expected


def test_evaluate_refuses_the_edited_copy_like_the_server(model: Path, tmp_path: Path) -> None:
    """The export stage's `evaluate` reads the card through the same loader: same refusal."""
    _edit_copy(model, labels=["cat", "wolf", "bird"])
    data = tmp_path / "data"
    for label in LABELS:
        (data / label).mkdir(parents=True)
    shutil.copy(REPO_ROOT / "docs" / "img" / "cpu_per_image.png", data / "cat" / "a.png")
    result = subprocess.run(
        [sys.executable, "-m", "model_export", "evaluate", "--model", str(model), "--data", str(data)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "disagrees with the card embedded in" in result.stderr and "'labels[1]'" in result.stderr


def _variant_card() -> ModelCard:
    figures = GateFigures(
        images=416,
        confident_images=380,
        confident_margin=0.02,
        top1_agreement_confident=0.9974,
        top1_agreement_all=0.9712,
        top5_overlap=0.9631,
        max_abs_prob_diff=0.21,
        accuracy_fp32=0.98,
        accuracy_variant=0.975,
        accuracy_difference=-0.005,
        accuracy_difference_ci95=(-0.012, 0.002),
    )
    gate = AccuracyGate(
        passed=True,
        thresholds={"top1_agreement_all_min": 0.97},
        figures=figures,
        images={"source": "photos", "crops": 416, "photos": ["skimage:rocket"]},
        measured_with="OpenVINO CPU",
    )
    variant = Variant(
        base_sha256="ab" * 32,
        base_version="1",
        method="NNCF",
        calibration={"source": "photos", "crops": 300, "photos": ["skimage:coffee"]},
        kept_in_fp32=["node_Gemm_1"],
        gate=gate,
        speed={"speedup_vs_fp32": 1.8},
    )
    card = tiny_card(labels=LABELS)
    return card.model_copy(update={"precision": "int8", "execution_provider": "openvino", "variant": variant})


def test_variant_fields_round_trip_through_the_file_and_its_copy(tmp_path: Path) -> None:
    weights, bias = 10 * np.eye(3, dtype=np.float32), np.zeros(3, np.float32)
    card = _variant_card()
    path = write_model(tmp_path, card, weights, bias)
    loaded = load_card(path)
    assert loaded.model_dump(exclude={"sha256"}) == card.model_dump(exclude={"sha256"})
    assert loaded.variant is not None and loaded.variant.gate.figures.accuracy_difference_ci95 == (
        -0.012,
        0.002,
    )
    assert loaded.gate_passed
    # a model.json that says another precision disagrees with the file
    _edit_copy(path, precision="fp16")
    with pytest.raises(CardError, match=r"'precision': 'fp16' in model\.json, 'int8' in the ONNX file"):
        load_card(path)


def test_a_card_without_the_variant_fields_still_loads_as_fp32_for_any_provider() -> None:
    data = json.loads(tiny_card().model_dump_json())
    for key in ("execution_provider", "variant"):
        del data[key]
    card = ModelCard.model_validate(data)
    assert (card.precision, card.execution_provider, card.variant, card.gate_passed) == (
        "fp32",
        None,
        None,
        True,
    )


def test_a_failed_gate_means_not_fit_to_serve_by_default() -> None:
    card = _variant_card()
    assert card.variant is not None
    failed = card.variant.gate.model_copy(update={"passed": False, "failures": ["top-5 overlap 0.9 < 0.96"]})
    card = card.model_copy(update={"variant": card.variant.model_copy(update={"gate": failed})})
    assert not card.gate_passed
