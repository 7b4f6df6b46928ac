"""Reduced-precision variants of an exported model, each judged by the accuracy gate.

``python -m model_export optimize`` turns an fp32 ``model.onnx`` into:

- **int8**: static post-training quantization with NNCF (per-channel symmetric int8 weights,
  int8 activations calibrated on held-apart images, fast bias correction), written as a QDQ
  ONNX graph and served by the OpenVINO runtime, which runs QDQ graphs as int8 kernels (ONNX
  Runtime's CPU provider runs the same file at a fraction of the speed: it executes the
  depthwise convolutions' QDQ pairs as float). The nodes a sensitivity pass finds that int8
  hurts most stay in fp32 (NNCF's ignored scope).
- **bf16**: the fp32 graph with OpenVINO's bf16 inference precision; only made where the CPU
  has bf16 arithmetic (AVX-512 BF16 or AMX). Elsewhere OpenVINO silently runs fp32, and a
  "bf16" variant measured that way would be the fp32 model under another name.
- **fp16**: the graph in half precision, for the CUDA and TensorRT providers. Its gate runs
  here on ONNX Runtime's CPU provider (the arithmetic, not the speed, is what the gate checks).

Every variant is compared with the fp32 model on held-out images (:mod:`model_export.gate`)
and its card records the precision, the execution provider it is made for, the calibration
set, the gate's figures and the speed measured beside fp32. A variant that misses the gate is
still written, marked failed: the server never serves it by default.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from tqdm import tqdm

from model_card import ExecutionProvider, ModelCard, Precision, Variant, load_card, write_card

from .export import MODEL_FILENAME, _attach_card, convert_to_fp16, exporter_versions
from .gate import GateThresholds, compare, judge
from .photos import CropSet

if TYPE_CHECKING:
    from .data import DatasetSplit
    from .qat import QatConfig

log = logging.getLogger(__name__)

PRECISIONS: tuple[Precision, ...] = ("int8", "bf16", "fp16")
BATCH_SIZE = 16
TIMING_ROUNDS = 3
TIMING_IMAGES = 64

Runner = Callable[[np.ndarray], np.ndarray]


class OptimizeError(RuntimeError):
    """A variant cannot be made or measured here; the message says why."""


@dataclass
class VariantResult:
    precision: Precision
    model_path: Path | None
    card: ModelCard | None
    skipped: str | None = None
    label: str = ""  # how the summary names it; the precision unless two variants share one

    def __post_init__(self) -> None:
        self.label = self.label or self.precision


@dataclass
class Measured:
    """A variant's probabilities on the gate images and its runner (for timing)."""

    probabilities: np.ndarray
    runner: Runner
    measured_with: str
    timing_provider: ExecutionProvider | None
    extra: dict[str, Any] = field(default_factory=dict)


# --- runners: uint8 NHWC batches -> float32 probabilities, on one thread ---------------------


def ort_runner(path: Path) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: batch})[0], dtype=np.float32)

    return run


def openvino_runner(path: Path, precision_hint: str | None = None) -> Runner:
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if precision_hint is not None:
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(request.infer([batch])[0], dtype=np.float32)

    return run


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has bf16 arithmetic on this machine."""
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in capabilities


def probabilities(runner: Runner, pixels: np.ndarray, desc: str) -> np.ndarray:
    batches = range(0, len(pixels), BATCH_SIZE)
    rows = [runner(pixels[i : i + BATCH_SIZE]) for i in tqdm(batches, desc=desc, unit="batch", leave=False)]
    return np.concatenate(rows)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_ms_per_image(
    runners: dict[str, Runner], pixels: np.ndarray, rounds: int = TIMING_ROUNDS
) -> dict[str, float]:
    """Median CPU-ms per image of each runner (one thread, batch 16), interleaved over rounds."""
    images = pixels[:TIMING_IMAGES]
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        runner(images[:BATCH_SIZE])  # compile, allocate
    for _ in tqdm(range(rounds), desc="timing", unit="round", leave=False):
        for name, runner in runners.items():
            start = _cpu_s()
            for i in range(0, len(images), BATCH_SIZE):
                runner(images[i : i + BATCH_SIZE])
            samples[name].append((_cpu_s() - start) * 1000 / len(images))
    return {name: float(np.median(values)) for name, values in samples.items()}


# --- making the variants ----------------------------------------------------------------------


def quantize_int8(
    source: Path, calibration: CropSet, input_name: str, keep_fp32: Sequence[str]
) -> onnx.ModelProto:
    """NNCF post-training quantization of ``source`` on ``calibration``; ``keep_fp32`` untouched.

    Activation ranges are the calibration set's whole range (min of the minima, max of the
    maxima), not NNCF's default mean of each image's extremes: that default clips whatever the
    calibration images show less often than the average image (on the tiny colour model, the
    brightest channel of a third of the colours).

    Weights use 7 of their 8 bits in every layer (NNCF's overflow fix): a CPU without VNNI
    multiplies int8 pairs with an instruction whose 16-bit sums saturate on full-range weights.
    On this project's AVX2 development CPU every-layer int8 of the default model kept 0.885 of
    the confident top-1 answers with it, 0.812 without.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = onnx.load(str(source))
    dataset = nncf.Dataset(
        [calibration.pixels[i : i + 1] for i in range(len(calibration))], lambda x: {input_name: x}
    )
    quantized: onnx.ModelProto = nncf.quantize(
        model,
        dataset,
        subset_size=len(calibration),
        fast_bias_correction=True,
        advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
            overflow_fix=OverflowFix.ENABLE,
        ),
        ignored_scope=nncf.IgnoredScope(names=list(keep_fp32)) if keep_fp32 else None,
    )
    return quantized


def depthwise_convolutions(source: Path) -> list[str]:
    """Names of the graph's depthwise (grouped) convolutions."""
    model = onnx.load(str(source), load_external_data=False)
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
    ]


def fp32_share_candidates(source: Path) -> list[tuple[str, list[str]]]:
    """The ignored scopes the sensitivity pass tries, fewest fp32 nodes first.

    Measured on the default model: the classifier (its 1,280 pooled features are one int8
    scale) and the first convolution (raw normalised pixels) move top-1 most; the depthwise
    convolutions, whose per-channel weights span decades, come next.
    """
    model = onnx.load(str(source), load_external_data=False)
    weighted = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    if not weighted:
        return [("all int8", [])]
    ends = list(dict.fromkeys([weighted[0], weighted[-1]]))
    head = weighted[-2:-1] if len(weighted) > 2 else []
    candidates = [("all int8", []), ("first and classifier in fp32", ends)]
    candidates.append(("first, head and classifier in fp32", list(dict.fromkeys(ends + head))))
    depthwise = depthwise_convolutions(source)
    if depthwise:
        candidates.append(
            ("first, head, classifier and depthwise in fp32", list(dict.fromkeys(ends + head + depthwise)))
        )
    return candidates


@dataclass
class SensitivityStep:
    name: str
    keep_fp32: list[str]
    figures: dict[str, float]
    passed: bool


def sensitivity_pass(
    source: Path,
    calibration: CropSet,
    tuning: CropSet,
    input_name: str,
    thresholds: GateThresholds,
    workdir: Path,
) -> tuple[onnx.ModelProto, list[str], list[SensitivityStep]]:
    """Quantize with each candidate scope in turn; the first whose agreement with fp32 on the
    tuning crops (calibration photos, never the gate's) meets the thresholds wins, else the best."""
    reference = probabilities(ort_runner(source), tuning.pixels, "fp32 on tuning crops")
    steps: list[SensitivityStep] = []
    best: tuple[float, onnx.ModelProto, list[str]] | None = None
    for name, keep in fp32_share_candidates(source):
        model = quantize_int8(source, calibration, input_name, keep)
        path = workdir / "candidate.onnx"
        onnx.save(model, str(path))
        figures = compare(reference, probabilities(openvino_runner(path), tuning.pixels, name))
        gate = judge(figures, thresholds, images={}, measured_with="tuning")
        score = figures.top1_agreement_confident + figures.top1_agreement_all + figures.top5_overlap
        steps.append(SensitivityStep(name, keep, _headline(figures.model_dump()), gate.passed))
        log.info("sensitivity: %s: %s", name, steps[-1].figures)
        if best is None or score > best[0]:
            best = (score, model, keep)
        if gate.passed:
            return model, keep, steps
    assert best is not None
    return best[1], best[2], steps


def _headline(figures: dict[str, Any]) -> dict[str, float]:
    keys = ("top1_agreement_confident", "top1_agreement_all", "top5_overlap")
    return {key: round(float(figures[key]), 4) for key in keys}


# --- the command --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizeConfig:
    source: Path
    output_dir: Path
    precisions: tuple[Precision, ...] = PRECISIONS
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    sensitivity: bool = True
    measure_speed: bool = True
    # Quantization-aware training when post-training int8 misses the gate (a model trained here).
    qat: QatConfig | None = None
    split: DatasetSplit | None = None


def _variant_card(
    base: ModelCard,
    precision: Precision,
    provider: ExecutionProvider,
    variant: Variant,
    output_dtype: str | None = None,
    explains: bool = True,
) -> ModelCard:
    output = base.output.model_copy(update={"dtype": output_dtype}) if output_dtype else base.output
    exporter = {**exporter_versions(), **_tool_versions()}
    return base.model_copy(
        update={
            "name": f"{base.name}-{precision}",
            "explanation": base.explanation if explains else None,
            "precision": precision,
            "execution_provider": provider,
            "variant": variant,
            "output": output,
            "exporter": exporter,
            "sha256": None,
        }
    )


def _tool_versions() -> dict[str, str]:
    versions = {}
    for package in ("nncf", "openvino"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def _write_variant(model_path: Path, card: ModelCard) -> None:
    _attach_card(model_path, card)
    write_card(card, model_path)


def make_variant_file(
    precision: Precision,
    config: OptimizeConfig,
    calibration: CropSet,
    tuning: CropSet,
    card: ModelCard,
    folder: Path,
) -> tuple[Path, list[str], str, list[SensitivityStep]]:
    """Write the variant's graph to ``folder/model.onnx``: (path, nodes kept in fp32, method, steps)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILENAME
    if precision == "int8":
        steps: list[SensitivityStep] = []
        if config.sensitivity:
            model, keep, steps = sensitivity_pass(
                config.source, calibration, tuning, card.input.name, config.thresholds, folder
            )
            (folder / "candidate.onnx").unlink(missing_ok=True)
        else:
            keep = []
            model = quantize_int8(config.source, calibration, card.input.name, keep)
        onnx.save(model, str(path))
        method = (
            "NNCF post-training quantization (ONNX backend): int8 symmetric per-channel weights in 7 bits "
            "(overflow fix), int8 activations from min/max statistics of the calibration crops, fast bias "
            "correction; QDQ graph"
        )
        return path, keep, method, steps
    shutil.copyfile(config.source, path)
    if precision == "fp16":
        convert_to_fp16(path, keep_float32=["input"] if card.input.dtype == "float32" else [])
        return path, [], "onnxruntime.transformers.float16: weights and activations in fp16", []
    return path, [], "fp32 graph run with OpenVINO's INFERENCE_PRECISION_HINT=bf16", []


def measure_variant(precision: Precision, path: Path, gate: CropSet) -> Measured:
    """The variant's probabilities on the gate images, on the runtime it is made for when that
    runs here, else on ONNX Runtime's CPU provider (fp16: the arithmetic, not the speed)."""
    if precision == "int8":
        runner = openvino_runner(path)
        return Measured(probabilities(runner, gate.pixels, "int8"), runner, "OpenVINO CPU", "openvino")
    if precision == "bf16":
        runner = openvino_runner(path, "bf16")
        return Measured(
            probabilities(runner, gate.pixels, "bf16"), runner, "OpenVINO CPU, bf16 hint", "openvino"
        )
    runner = ort_runner(path)
    measured = probabilities(runner, gate.pixels, "fp16")
    return Measured(measured, runner, "ONNX Runtime CPUExecutionProvider (made for CUDA)", None)


def optimize_model(
    config: OptimizeConfig, calibration: CropSet, tuning: CropSet, gate: CropSet
) -> list[VariantResult]:
    """Every variant asked for, written under ``config.output_dir/<precision>/`` with its gate."""
    card = load_card(config.source)
    if card.precision != "fp32" or card.variant is not None:
        raise OptimizeError(f"{config.source} is a {card.precision} variant: optimize its fp32 model")
    fp32_runner = ort_runner(config.source)
    reference = probabilities(fp32_runner, gate.pixels, "fp32")
    results: list[VariantResult] = []
    for precision in config.precisions:
        if precision == "bf16" and not cpu_has_bf16():
            results.append(
                VariantResult(
                    precision,
                    None,
                    None,
                    skipped=(
                        "this CPU has no bf16 arithmetic (no AVX-512 BF16 or AMX): OpenVINO would run fp32 "
                        "under a bf16 name, so there is nothing to measure or serve"
                    ),
                )
            )
            continue
        folder = config.output_dir / precision
        started = time.perf_counter()
        path, keep, method, steps = make_variant_file(precision, config, calibration, tuning, card, folder)
        sensitivity = {"sensitivity_pass": [step.__dict__ for step in steps]}
        variant = VariantMade(precision, path, method, keep, sensitivity)
        results.append(judge_and_write(variant, config, card, reference, fp32_runner, calibration, gate))
        log.info("%s written in %.0f s", precision, time.perf_counter() - started)
        int8 = results[-1].card
        if precision == "int8" and config.qat is not None and int8 is not None and not int8.gate_passed:
            results.append(quantization_aware_result(config, card, reference, fp32_runner, calibration, gate))
    return results


@dataclass
class VariantMade:
    """A variant's graph on disk and how it was made, before the gate has judged it."""

    precision: Precision
    path: Path
    method: str
    kept_in_fp32: list[str]
    extra_speed: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    explains: bool = True
    retrained: bool = False  # quantization-aware: judged on its accuracy (model_export.gate)


def judge_and_write(
    made: VariantMade,
    config: OptimizeConfig,
    card: ModelCard,
    reference: np.ndarray,
    fp32_runner: Runner,
    calibration: CropSet,
    gate: CropSet,
) -> VariantResult:
    """Run the gate and the timing rounds on ``made`` and write its card into its graph."""
    precision = made.precision
    measured = measure_variant(precision, made.path, gate)
    thresholds = replace(config.thresholds, judge_agreement=False) if made.retrained else config.thresholds
    figures = compare(reference, measured.probabilities, gate.labels, thresholds.confident_margin)
    verdict = judge(figures, thresholds, images=gate.describe(), measured_with=measured.measured_with)
    speed: dict[str, Any] = {}
    if config.measure_speed and measured.timing_provider is not None:
        timings = cpu_ms_per_image({"fp32": fp32_runner, precision: measured.runner}, gate.pixels)
        speed = {
            "cpu_ms_per_image": round(timings[precision], 3),
            "fp32_cpu_ms_per_image": round(timings["fp32"], 3),
            "speedup_vs_fp32": round(timings["fp32"] / timings[precision], 3),
            "how": f"one thread, batch {BATCH_SIZE}, {TIMING_ROUNDS} interleaved rounds, medians; "
            "fp32 on ONNX Runtime CPU",
        }
    provider: ExecutionProvider = "openvino" if precision in ("int8", "bf16") else "cuda"
    extra = {key: value for key, value in made.extra_speed.items() if value}
    variant = Variant(
        base_sha256=card.sha256 or "",
        base_version=card.version,
        method=made.method,
        calibration=calibration.describe() if precision == "int8" else None,
        kept_in_fp32=made.kept_in_fp32,
        gate=verdict,
        speed={**speed, **extra},
    )
    variant_card = _variant_card(
        card, precision, provider, variant, "float16" if precision == "fp16" else None, made.explains
    )
    _write_variant(made.path, variant_card)
    return VariantResult(precision, made.path, load_card(made.path), label=made.label)


def quantization_aware_result(
    config: OptimizeConfig,
    card: ModelCard,
    reference: np.ndarray,
    fp32_runner: Runner,
    calibration: CropSet,
    gate: CropSet,
) -> VariantResult:
    """The int8 variant made by quantization-aware training, in ``output_dir/int8-qat/``, gated."""
    from .qat import quantization_aware_variant

    assert config.qat is not None
    if config.split is None:
        raise OptimizeError("quantization-aware training needs the training run's split (--split)")
    folder = config.output_dir / "int8-qat"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trained = quantization_aware_variant(config.qat, config.split, calibration, card, folder / MODEL_FILENAME)
    made = VariantMade(
        "int8",
        trained.path,
        trained.method,
        [],
        {"quantization_aware_epochs": trained.epochs},
        label="int8-qat",
        # Its graph ends at the probabilities: the class activation maps are not exported.
        explains=False,
        retrained=True,
    )
    result = judge_and_write(made, config, card, reference, fp32_runner, calibration, gate)
    log.info("int8-qat written in %.0f s", time.perf_counter() - started)
    return result
