"""Execution providers: from the card or the setting, OpenVINO beside ONNX Runtime, one warning
when a provider is missing and a fallback serves, an error instead when the setting says so."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.inference import engine as engine_module
from app.inference.engine import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    OPENVINO_PROVIDER,
    EngineError,
    EngineOptions,
    create_engine,
)
from harness.tiny_model import expected_probabilities, tiny_card, write_model
from model_card import ExecutionProvider, Precision

COLOURS = np.array([[200, 30, 30], [20, 220, 40], [10, 20, 250], [128, 128, 128]], dtype=np.uint8)
NO_CUDA = pytest.mark.skipif(CUDA_PROVIDER in ort.get_available_providers(), reason="CUDA is available here")


def flat_batch(size: int = 32) -> np.ndarray:
    return np.broadcast_to(COLOURS[:, None, None, :], (4, size, size, 3)).copy()


def model_for(
    tmp_path: Path, provider: ExecutionProvider | None, precision: Precision = "fp32", layout: str = "NHWC"
) -> Path:
    card = tiny_card(layout=layout).model_copy(
        update={"execution_provider": provider, "precision": precision}
    )  # type: ignore[arg-type]
    return write_model(tmp_path, card)


def fallback_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is not available" in r.getMessage()]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_openvino_from_the_card_gives_onnx_runtimes_answers(tmp_path: Path, layout: str) -> None:
    engine = create_engine(model_for(tmp_path, "openvino", layout=layout), EngineOptions(intra_op_threads=2))
    assert (engine.execution_provider, engine.precision, engine.instances) == (OPENVINO_PROVIDER, "fp32", 2)
    expected = expected_probabilities(COLOURS / 255)
    np.testing.assert_allclose(engine.run(flat_batch()), expected, atol=1e-5)
    np.testing.assert_allclose(engine.run(flat_batch(), instance=True), expected, atol=1e-5)


def test_the_setting_overrides_the_card(tmp_path: Path) -> None:
    path = model_for(tmp_path, "openvino")
    assert create_engine(path, EngineOptions(execution_provider="cpu")).execution_provider == CPU_PROVIDER
    plain = model_for(tmp_path / "plain", None)
    assert (
        create_engine(plain, EngineOptions(execution_provider="openvino")).execution_provider
        == OPENVINO_PROVIDER
    )


@NO_CUDA
def test_a_missing_provider_falls_back_with_one_clear_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.inference.engine")
    engine = create_engine(model_for(tmp_path, "tensorrt"), EngineOptions())
    assert engine.execution_provider == CPU_PROVIDER
    [line] = fallback_lines(caplog)
    assert line.startswith("execution provider tensorrt (from its model card) is not available: tensorrt: ")
    assert "falling back to cpu (set IMGSERVE_REQUIRE_PROVIDER=true to make this fatal)" in line


@NO_CUDA
def test_require_provider_makes_the_fallback_fatal(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="asks for the cuda execution provider, which cannot run here"):
        create_engine(
            model_for(tmp_path, None), EngineOptions(execution_provider="cuda", require_provider=True)
        )


def test_openvino_missing_falls_back_to_onnx_runtime_or_fails_when_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine_module, "openvino_available", lambda: "the openvino package is not installed")
    path = model_for(tmp_path, "openvino")
    engine = create_engine(path, EngineOptions())
    assert engine.execution_provider == CPU_PROVIDER
    [line] = fallback_lines(caplog)
    assert "openvino: the openvino package is not installed; falling back to cpu" in line
    with pytest.raises(EngineError, match="IMGSERVE_REQUIRE_PROVIDER makes that fatal"):
        create_engine(path, EngineOptions(require_provider=True))


def test_a_bf16_card_on_onnx_runtime_runs_and_says_fp32(tmp_path: Path) -> None:
    engine = create_engine(model_for(tmp_path, "openvino", "bf16"), EngineOptions(execution_provider="cpu"))
    assert (engine.execution_provider, engine.precision) == (CPU_PROVIDER, "fp32")


def test_bf16_on_openvino_is_what_the_cpu_can_do(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import openvino as ov

    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    path = model_for(tmp_path, "openvino", "bf16")
    engine = create_engine(path, EngineOptions())
    assert engine.precision == ("bf16" if has_bf16 else "fp32")
    if not has_bf16:
        assert "the card asks for bf16 but this CPU has no bf16 arithmetic" in caplog.text
        with pytest.raises(EngineError, match="no bf16 arithmetic"):
            create_engine(path, EngineOptions(require_provider=True))
