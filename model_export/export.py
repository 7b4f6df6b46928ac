"""ONNX export: in-graph preprocessing, fp16, the PyTorch-vs-ONNX Runtime parity check, the model card.

Exporter choice: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript, the default since
PyTorch 2.9). On timm's TF-'same'-padded convolutions it folds the padding into the Conv nodes
and gives a clean graph with a symbolic batch axis; the legacy TorchScript exporter emits a
Shape/Ceil/Pad subgraph per padded conv and a DeprecationWarning (an error under our pytest
settings).
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from model_card import CARD_METADATA_KEY, Explanation, ModelCard, Preprocessing, TensorSpec, write_card

from .data import create_eval_transform, load_rgb, mean_std_tensors, normalize_uint8
from .explain import (
    CAM_CLASSES_OUTPUT,
    CAM_OUTPUT,
    Explainer,
    ExplainError,
    create_explainer,
    reference_maps,
)

log = logging.getLogger(__name__)

MODEL_FILENAME = "model.onnx"
OPSET_VERSION = 18
# Max |p_torch - p_onnx| over all classes and images. fp32 differs only by kernel rounding;
# fp16 stores weights and activations with a 10-bit mantissa (~1e-3 relative).
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
# Max |map_torch - map_onnx| over the cells of every [0, 1]-normalised map.
FP32_MAP_TOLERANCE = 1e-4
FP16_MAP_TOLERANCE = 5e-2
PARITY_BATCH_SIZE = 8
_VERSIONED_PACKAGES = ("torch", "torchvision", "timm", "onnx", "onnxscript", "onnxruntime", "imgserve")


class ExportError(RuntimeError):
    """The export failed a check (ONNX checker, parity tolerance, top-1 agreement)."""


class PixelsToProbabilities(nn.Module):
    """uint8 NHWC RGB pixels -> softmax probabilities; the normalisation is part of the graph.

    With an ``explainer`` the graph also outputs its maps and their classes (after the
    probabilities, which keep their name and place).
    """

    def __init__(
        self, model: nn.Module, preprocessing: Preprocessing, explainer: Explainer | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.explainer = explainer
        mean, std = mean_std_tensors(preprocessing)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    mean: torch.Tensor
    std: torch.Tensor

    def model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalize_uint8(pixels.permute(0, 3, 1, 2), self.mean, self.std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _probabilities(self.model, self.explainer, self.model_input(pixels))


class FloatToProbabilities(nn.Module):
    """Normalised float NCHW -> softmax probabilities (``--float-input``), maps as above."""

    def __init__(self, model: nn.Module, explainer: Explainer | None = None) -> None:
        super().__init__()
        self.model = model
        self.explainer = explainer

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _probabilities(self.model, self.explainer, x)


def _probabilities(
    model: nn.Module, explainer: Explainer | None, x: torch.Tensor
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if explainer is None:
        logits: torch.Tensor = model(x)
        return logits.softmax(dim=-1)
    logits, maps, classes = explainer(x)
    return logits.softmax(dim=-1), maps, classes


@dataclass
class ParityReport:
    """PyTorch vs ONNX Runtime on the same real images (and their maps, when the graph explains)."""

    batch_sizes: list[int]
    max_abs_diff: float
    top1_agreement: float
    tolerance: float
    num_images: int
    max_abs_map_diff: float | None = None
    map_tolerance: float | None = None

    def as_dict(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "batch_sizes": self.batch_sizes,
            "max_abs_prob_diff": self.max_abs_diff,
            "top1_agreement": self.top1_agreement,
            "tolerance": self.tolerance,
            "num_images": self.num_images,
        }
        if self.max_abs_map_diff is not None:
            report["max_abs_map_diff"] = self.max_abs_map_diff
            report["map_tolerance"] = self.map_tolerance
        return report


@dataclass
class ExportResult:
    model_path: Path
    card_path: Path
    card: ModelCard
    parity: ParityReport


def exporter_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def sample_photo_paths() -> list[Path]:
    """Real photos that ship with the export stage's own dependencies (no downloads)."""
    import matplotlib
    import sklearn.datasets

    sklearn_images = Path(sklearn.datasets.__file__).parent / "images"
    mpl_samples = Path(matplotlib.get_data_path()) / "sample_data"
    candidates = [
        sklearn_images / "china.jpg",
        sklearn_images / "flower.jpg",
        mpl_samples / "grace_hopper.jpg",
    ]
    return [p for p in candidates if p.is_file()]


def load_parity_images(
    preprocessing: Preprocessing, extra_paths: list[Path] | None = None, count: int = PARITY_BATCH_SIZE
) -> np.ndarray:
    """``count`` real images through the eval transform, as uint8 NHWC.

    ``extra_paths`` (e.g. validation images) come first; the sample photos and their mirror
    images fill up the rest so there is always a batch of ``count`` distinct real inputs.
    """
    transform = create_eval_transform(preprocessing)
    images: list[Image.Image] = [load_rgb(p) for p in (extra_paths or [])[:count]]
    photos = [load_rgb(p) for p in sample_photo_paths()]
    variants = photos + [p.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in photos]
    variants += [p.crop((0, 0, p.width // 2, p.height)) for p in photos]
    variants += [p.crop((p.width // 2, 0, p.width, p.height)) for p in photos]
    images += variants[: max(0, count - len(images))]
    if not images:
        raise ExportError(
            "no real images found for the parity check (sklearn/matplotlib sample photos missing)"
        )
    return np.stack([transform(image).permute(1, 2, 0).numpy() for image in images])


def _torch_probabilities(wrapper: nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        outputs = wrapper(torch.from_numpy(inputs))
        probabilities: torch.Tensor = outputs[0] if isinstance(outputs, tuple) else outputs
        return probabilities.float().numpy()


def check_parity(
    wrapper: nn.Module,
    onnx_path: Path,
    inputs: np.ndarray,
    tolerance: float,
    batch_sizes: tuple[int, ...],
    map_tolerance: float = FP32_MAP_TOLERANCE,
) -> ParityReport:
    """Compare PyTorch and ONNX Runtime probabilities at each batch size; raise past ``tolerance``.

    Top-1 must agree on every image, except near-ties where PyTorch's top two classes are
    closer than the tolerance itself (rounding may legitimately swap those). When the wrapper
    explains, the graph's maps must match the maps PyTorch computes from the module itself
    (:func:`model_export.explain.reference_maps`) within ``map_tolerance``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    explainer = getattr(wrapper, "explainer", None)
    max_abs_diff = 0.0
    max_map_diff = 0.0
    agree = 0
    total = 0
    for batch_size in batch_sizes:
        batch = inputs[:batch_size]
        expected = _torch_probabilities(wrapper, batch)
        outputs = session.run(None, {input_name: batch})
        actual = outputs[0].astype(np.float32)
        if actual.shape != expected.shape or not np.isfinite(actual).all():
            raise ExportError(
                f"ONNX output at batch {batch_size} has shape {actual.shape} (expected {expected.shape}) "
                f"or non-finite values ({int((~np.isfinite(actual)).sum())})"
            )
        max_abs_diff = max(max_abs_diff, float(np.abs(actual - expected).max()))
        top2 = np.sort(expected, axis=1)[:, -2:]
        near_tie = (top2[:, 1] - top2[:, 0]) < tolerance
        same = actual.argmax(1) == expected.argmax(1)
        agree += int(same.sum())
        total += len(batch)
        if not (same | near_tie).all():
            raise ExportError(
                f"ONNX top-1 differs from PyTorch on {int((~same).sum())} "
                f"of {len(batch)} images at batch {batch_size}"
            )
        if isinstance(explainer, Explainer):
            maps, classes = np.asarray(outputs[1]), np.asarray(outputs[2])
            max_map_diff = max(
                max_map_diff, _map_difference(wrapper, explainer, batch, actual, maps, classes)
            )
    report = ParityReport(list(batch_sizes), max_abs_diff, agree / total, tolerance, len(inputs))
    if max_abs_diff > tolerance:
        raise ExportError(
            f"ONNX Runtime probabilities differ from PyTorch by {max_abs_diff:.3g}, "
            f"above the tolerance {tolerance:g} (batch sizes {list(batch_sizes)})"
        )
    if isinstance(explainer, Explainer):
        report.max_abs_map_diff, report.map_tolerance = max_map_diff, map_tolerance
        if max_map_diff > map_tolerance:
            raise ExportError(
                f"ONNX Runtime's {explainer.method} maps differ from PyTorch's by {max_map_diff:.3g}, "
                f"above the tolerance {map_tolerance:g} (batch sizes {list(batch_sizes)})"
            )
    return report


def _map_difference(
    wrapper: nn.Module,
    explainer: Explainer,
    batch: np.ndarray,
    probabilities: np.ndarray,
    maps: np.ndarray,
    classes: np.ndarray,
) -> float:
    """Max |graph map - PyTorch map| for the classes the graph chose, after checking that those
    are its own top-k classes (most probable first) and that every map lies in [0, 1]."""
    count, k = classes.shape
    if maps.shape[:2] != (count, k) or not np.isfinite(maps).all() or maps.min() < 0 or maps.max() > 1:
        raise ExportError(f"the graph's maps have shape {maps.shape} or values outside [0, 1]")
    chosen = np.take_along_axis(probabilities, classes, axis=1)
    others = probabilities.copy()
    np.put_along_axis(others, classes, -np.inf, axis=1)
    # TopK runs on the logits; float rounding may make two probabilities equal, never reorder them.
    if (chosen.min(1) < others.max(1) - 1e-6).any() or (np.diff(chosen, axis=1) > 1e-6).any():
        raise ExportError("the graph's map classes are not its own top classes, most probable first")
    model_input = wrapper.model_input(torch.from_numpy(batch))  # type: ignore[operator]
    with torch.no_grad():
        expected = reference_maps(
            explainer.model, explainer.method, model_input.float(), torch.from_numpy(classes)
        )
    return float(np.abs(maps.astype(np.float32) - expected.numpy()).max())


def _export_graph(
    wrapper: nn.Module, example: torch.Tensor, input_name: str, path: Path, output_names: list[str]
) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The dynamo exporter narrates each step on stdout; our own summary says what matters.
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=output_names,
            dynamic_shapes={"pixels" if input_name == "pixels" else "x": {0: batch}},
            opset_version=OPSET_VERSION,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def convert_to_fp16(path: Path, keep_float32: list[str]) -> None:
    """Rewrite ``path`` in half precision; the output becomes float16, ``keep_float32`` inputs do not.

    A uint8 input is untouched anyway; a ``--float-input`` input stays float32 as
    docs/ARCHITECTURE.md specifies, behind a Cast. The parity check then proves that ONNX
    Runtime's CPU provider runs the file.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    model = convert_float_to_float16(model, keep_io_types=keep_float32 or False)
    # The converter appends the Cast of a kept float32 input at the end of the node list;
    # ONNX requires topological order.
    _sort_nodes_topologically(model.graph)
    onnx.save(model, str(path))


def _sort_nodes_topologically(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ExportError(f"graph has a cycle or a dangling input at node {pending[0].name!r}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def _attach_card(path: Path, card: ModelCard) -> None:
    model = onnx.load(str(path))
    onnx.helper.set_model_props(
        model,
        {
            **{p.key: p.value for p in model.metadata_props if p.key != CARD_METADATA_KEY},
            CARD_METADATA_KEY: card.to_metadata_json(),
        },
    )
    model.doc_string = f"{card.name} {card.version}: {card.architecture}, {card.num_classes} classes"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_model(
    model: nn.Module,
    *,
    output_dir: Path,
    name: str,
    version: str,
    architecture: str,
    weights: str,
    labels: list[str],
    preprocessing: Preprocessing,
    dataset: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    fp16: bool = False,
    float_input: bool = False,
    parity_paths: list[Path] | None = None,
    explain: bool = True,
) -> ExportResult:
    """Export ``model`` (logits, float NCHW) to ``output_dir/model.onnx`` + ``model.json``, checked.

    The graph ends in softmax; by default it starts from uint8 NHWC pixels and normalises
    inside. With ``explain`` and a head :mod:`model_export.explain` can explain exactly, the
    graph also outputs the class activation maps of the top classes (the card says how);
    any other model is exported without them and its card says it does not explain. Fails
    with :class:`ExportError` if ONNX Runtime disagrees with PyTorch past the stated
    tolerance at batch 1 and N on real images.
    """
    model = model.eval().float().cpu()
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / MODEL_FILENAME
    preprocessing = preprocessing.model_copy(update={"normalization_in_graph": not float_input})
    images = load_parity_images(preprocessing, parity_paths)
    output_dtype: Literal["float16", "float32"] = "float16" if fp16 else "float32"
    mean, std = mean_std_tensors(preprocessing)
    model_inputs = normalize_uint8(torch.from_numpy(images).permute(0, 3, 1, 2), mean, std).contiguous()
    explainer = _create_explainer(model, model_inputs[:2]) if explain else None
    wrapper: nn.Module
    if float_input:
        wrapper = FloatToProbabilities(model, explainer).eval()
        inputs = model_inputs.numpy()
        input_spec = TensorSpec(name="input", layout="NCHW", dtype="float32")
    else:
        wrapper = PixelsToProbabilities(model, preprocessing, explainer).eval()
        inputs = images
        input_spec = TensorSpec(name="pixels", layout="NHWC", dtype="uint8")
    example = torch.from_numpy(
        np.ascontiguousarray(inputs[:2]).astype(np.float32 if float_input else np.uint8)
    )
    output_names = ["probabilities", *([CAM_OUTPUT, CAM_CLASSES_OUTPUT] if explainer else [])]
    try:
        _export_graph(wrapper, example, "input" if float_input else "pixels", path, output_names)
        if fp16:
            convert_to_fp16(path, keep_float32=["input"] if float_input else [])
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)

        # The reference is always the fp32 PyTorch model: fp16 is judged against what it approximates.
        tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
        map_tolerance = FP16_MAP_TOLERANCE if fp16 else FP32_MAP_TOLERANCE
        parity = check_parity(wrapper, path, inputs, tolerance, (1, len(inputs)), map_tolerance)
        explanation = _explanation(explainer, model_inputs[:1], output_dtype) if explainer else None
    finally:
        if explainer is not None:
            explainer.close()

    card = ModelCard(
        name=name,
        version=version,
        architecture=architecture,
        weights=weights,
        labels=labels,
        input=input_spec,
        output=TensorSpec(name="probabilities", layout="NC", dtype=output_dtype),
        preprocessing=preprocessing,
        precision="fp16" if fp16 else "fp32",
        dataset=dataset or {},
        metrics={**(metrics or {}), "export_parity": parity.as_dict()},
        exporter={**exporter_versions(), "torch_onnx_exporter": "dynamo", "opset": str(OPSET_VERSION)},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        explanation=explanation,
    )
    if len(labels) != _output_classes(path):
        raise ExportError(
            f"the graph outputs {_output_classes(path)} classes but the card has {len(labels)} labels"
        )
    _attach_card(path, card)
    card_path = write_card(card, path)
    return ExportResult(model_path=path, card_path=card_path, card=card, parity=parity)


def _create_explainer(model: nn.Module, example: torch.Tensor) -> Explainer | None:
    """The model's explainer, or None (logged with the reason) when its head cannot be explained."""
    try:
        return create_explainer(model, example)
    except ExplainError as exc:
        log.warning("exporting without class activation maps: %s", exc)
        return None


def _explanation(
    explainer: Explainer, example: torch.Tensor, dtype: Literal["float16", "float32"]
) -> Explanation:
    """What the card says about the maps: method, outputs, how many classes, the grid."""
    with torch.no_grad():
        _, maps, _ = explainer(example)
    return Explanation(
        method=explainer.method,
        maps_output=CAM_OUTPUT,
        classes_output=CAM_CLASSES_OUTPUT,
        top_k=explainer.top_k,
        height=int(maps.shape[2]),
        width=int(maps.shape[3]),
        dtype=dtype,
        layer=explainer.layer,
    )


def _output_classes(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return int(model.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
