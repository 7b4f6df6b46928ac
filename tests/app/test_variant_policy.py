"""Variants as versions: ``auto`` serves the fastest one that passed its gate and runs here, fp32
otherwise; a variant that failed its gate is never served unless named."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.inference.repository import DirectoryRepository, VersionPolicy
from harness.tiny_model import tiny_card, write_model
from model_card import AccuracyGate, ExecutionProvider, GateFigures, Precision, Variant


def variant(passed: bool, speedup: float | None) -> Variant:
    figures = GateFigures(
        images=400,
        confident_images=380,
        confident_margin=0.02,
        top1_agreement_confident=0.999 if passed else 0.9,
        top1_agreement_all=0.99 if passed else 0.88,
        top5_overlap=0.99 if passed else 0.89,
        max_abs_prob_diff=0.05,
    )
    gate = AccuracyGate(
        passed=passed,
        thresholds={},
        failures=[] if passed else ["top-5 overlap 0.8900 < 0.96"],
        figures=figures,
        measured_with="test",
    )
    speed = {} if speedup is None else {"speedup_vs_fp32": speedup}
    return Variant(base_sha256="0" * 64, base_version="1", method="test", gate=gate, speed=speed)


def write(
    root: Path,
    version: int,
    precision: Precision = "fp32",
    provider: ExecutionProvider | None = None,
    passed: bool = True,
    speedup: float | None = None,
) -> None:
    card = tiny_card(name="colours", version=str(version)).model_copy(
        update={
            "precision": precision,
            "execution_provider": provider,
            "variant": None if precision == "fp32" else variant(passed, speedup),
        }
    )
    write_model(root / "colours" / str(version), card)


def plan(root: Path, policy: VersionPolicy) -> list[str]:
    return [source.version or "" for source in DirectoryRepository(root).plan("colours", policy)]


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    write(tmp_path, 1)  # fp32
    write(tmp_path, 2, "int8", "openvino", passed=True, speedup=1.8)
    write(tmp_path, 3, "int8", "openvino", passed=True, speedup=1.3)
    write(tmp_path, 4, "int8", "openvino", passed=False, speedup=2.7)  # fast and wrong
    return tmp_path


def test_auto_serves_the_fastest_variant_that_passed_its_gate(repository: Path) -> None:
    assert plan(repository, VersionPolicy("auto")) == ["2"]


def test_auto_serves_fp32_when_no_variant_is_faster_and_passed(tmp_path: Path) -> None:
    write(tmp_path, 1)
    write(tmp_path, 2, "int8", "openvino", passed=False, speedup=2.0)
    write(tmp_path, 3, "fp16", "cuda", passed=True)  # no speed measured: not known to be faster
    assert plan(tmp_path, VersionPolicy("auto")) == ["1"]


def test_auto_skips_a_variant_whose_provider_cannot_run_here(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("TensorRT is available here")
    write(tmp_path, 1)
    write(tmp_path, 2, "fp16", "tensorrt", passed=True, speedup=3.0)
    assert plan(tmp_path, VersionPolicy("auto")) == ["1"]


def test_latest_and_all_leave_out_a_failed_variant_that_specific_still_serves(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert plan(repository, VersionPolicy()) == ["3"]
    assert "not serving colours version 4 by default: it failed its accuracy gate" in caplog.text
    assert plan(repository, VersionPolicy("all")) == ["1", "2", "3"]
    assert plan(repository, VersionPolicy("specific", specific=(4,))) == ["4"]


def test_auto_in_config_toml(repository: Path) -> None:
    (repository / "colours" / "config.toml").write_text("[version_policy]\nauto = true\n")
    assert plan(repository, None) == ["2"]  # type: ignore[arg-type]
