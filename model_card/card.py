"""The model card: everything the server needs to use an exported model correctly.

The export stage (``model_export``) writes it; the server reads it and nothing else for
labels and preprocessing. It travels with the ONNX file twice: inside the file's
``metadata_props`` under :data:`CARD_METADATA_KEY` (without ``sha256``, which a file cannot
hold of itself), and as ``model.json`` beside the file (with ``sha256``), a copy for people.

One rule decides which is the truth (:func:`load_card`): the card inside the ONNX file. The
sha256 in ``model.json`` covers the ONNX file, card included, so the embedded card cannot be
changed without the mismatch showing; ``model.json`` can be edited freely, so it is checked
against the embedded card field by field and refused, naming both files and the first
difference, when they disagree.

pydantic only: both stages import this package and it imports neither (no PyTorch, no onnx,
no ONNX Runtime; :mod:`model_card.onnx_metadata` reads the file's metadata by itself).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model_card.onnx_metadata import MetadataError, read_onnx_metadata

CARD_METADATA_KEY = "model_card"
CARD_FILENAME = "model.json"
SCHEMA_VERSION = 1

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]
Precision = Literal["fp32", "fp16", "bf16", "int8"]
# What runs the graph: ONNX Runtime's CPU, CUDA or TensorRT provider, or the OpenVINO runtime.
ExecutionProvider = Literal["cpu", "openvino", "cuda", "tensorrt"]


class CardError(Exception):
    """The model file or its card is missing, unreadable or inconsistent."""


class TensorSpec(BaseModel):
    """One graph input or output."""

    model_config = ConfigDict(extra="forbid")

    name: str
    layout: Literal["NHWC", "NCHW", "NC"]
    dtype: Literal["uint8", "float32", "float16"]


class Preprocessing(BaseModel):
    """How a decoded RGB image becomes the graph input (torchvision's eval transform).

    Resize the short side to ``resize_size`` with ``interpolation`` (the long side is
    ``int(resize_size * long / short)``, as torchvision computes it), then centre-crop
    ``crop_size`` x ``crop_size``. With a uint8 NHWC input the graph itself scales by 1/255
    and applies ``mean``/``std``; with a float NCHW input the caller must.
    """

    model_config = ConfigDict(extra="forbid")

    resize_size: int = Field(gt=0)
    crop_size: int = Field(gt=0)
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color_mode: Literal["RGB"] = "RGB"
    normalization_in_graph: bool = True

    @model_validator(mode="after")
    def _crop_fits(self) -> Preprocessing:
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than resize_size {self.resize_size}")
        return self


class Explanation(BaseModel):
    """How the model explains its answers: class activation maps computed inside the graph.

    ``maps_output`` holds float maps [N, ``top_k``, ``height``, ``width``], each normalised to
    [0, 1] (min-max over its cells), for the image's ``top_k`` most probable classes, most
    probable first; ``classes_output`` holds their class indices [N, ``top_k``] (int64). The
    grid covers the model's input crop. ``method``: ``cam`` (the pooled feature map weighted by
    the linear head's row of the class) or ``grad-cam`` (channels weighted by the spatial mean
    of the class logit's gradient, then ReLU).
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["cam", "grad-cam"]
    maps_output: str
    classes_output: str
    top_k: int = Field(ge=1)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    dtype: Literal["float32", "float16"] = "float32"
    layer: str = Field(default="", description="The feature map explained, in the exporter's words.")


class GateFigures(BaseModel):
    """A variant against its fp32 model on the same held-out images."""

    model_config = ConfigDict(extra="forbid")

    images: int = Field(ge=0)
    confident_images: int = Field(
        ge=0, description="Images where fp32's top-1 leads its runner-up by the margin."
    )
    confident_margin: float = Field(ge=0)
    top1_agreement_confident: float = Field(ge=0, le=1)
    top1_agreement_all: float = Field(ge=0, le=1)
    top5_overlap: float = Field(ge=0, le=1, description="Mean share of fp32's top 5 in the variant's top 5.")
    max_abs_prob_diff: float = Field(ge=0)
    # Where the images have labels (a model trained here, judged on its validation split).
    accuracy_fp32: float | None = None
    accuracy_variant: float | None = None
    accuracy_difference: float | None = Field(default=None, description="variant - fp32, in [-1, 1].")
    accuracy_difference_ci95: tuple[float, float] | None = None


class AccuracyGate(BaseModel):
    """The gate a variant must pass before it may serve by default, and how it did."""

    model_config = ConfigDict(extra="forbid")

    passed: bool
    thresholds: dict[str, float]
    failures: list[str] = Field(default_factory=list, description="Each threshold missed, in words.")
    figures: GateFigures
    images: dict[str, Any] = Field(default_factory=dict, description="Where the held-out images came from.")
    measured_with: str = Field(description="The runtime and provider that ran both models.")


class Variant(BaseModel):
    """How a reduced-precision variant was made from its fp32 model, and what it costs and keeps."""

    model_config = ConfigDict(extra="forbid")

    base_sha256: str = Field(description="sha256 of the fp32 model file it was made from.")
    base_version: str
    method: str
    calibration: dict[str, Any] | None = None
    kept_in_fp32: list[str] = Field(default_factory=list, description="Nodes left in full precision.")
    gate: AccuracyGate
    speed: dict[str, Any] = Field(
        default_factory=dict, description="CPU-ms per image of the variant and of fp32, measured together."
    )


class ModelCard(BaseModel):
    """Labels, preprocessing, provenance and metrics of one exported model."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    architecture: str
    weights: str = Field(description="Where the weights came from: a source, a dataset, a run.")
    labels: list[str] = Field(min_length=2)
    input: TensorSpec
    output: TensorSpec
    preprocessing: Preprocessing
    precision: Precision = "fp32"
    execution_provider: ExecutionProvider | None = Field(
        default=None, description="The provider the file is made for; None: any (the server's default)."
    )
    variant: Variant | None = Field(default=None, description="Set on a reduced-precision variant.")
    dataset: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    exporter: dict[str, str] = Field(default_factory=dict, description="Package versions that made the file.")
    created_at: str = ""
    explanation: Explanation | None = Field(
        default=None, description="How the model explains its answers; absent: it does not."
    )
    sha256: str | None = Field(default=None, description="sha256 of the ONNX file; only in model.json.")

    @property
    def gate_passed(self) -> bool:
        """An fp32 model, or a variant that passed its accuracy gate: fit to serve by default."""
        return self.variant is None or self.variant.gate.passed

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image as the graph takes it (without the batch axis)."""
        size = self.preprocessing.crop_size
        if self.input.layout == "NHWC":
            return (size, size, 3)
        return (3, size, size)

    def to_metadata_json(self) -> str:
        """The card as stored inside the ONNX file (no sha256)."""
        return self.model_dump_json(exclude={"sha256"})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_path_for(model_path: Path) -> Path:
    """Where the readable copy of ``model_path``'s card lives: ``model.json`` beside it."""
    return model_path.parent / CARD_FILENAME


def write_card(card: ModelCard, model_path: Path) -> Path:
    """Write ``model.json`` beside ``model_path`` with the file's sha256 filled in."""
    card = card.model_copy(update={"sha256": sha256_file(model_path)})
    card_path = card_path_for(model_path)
    card_path.write_text(card.model_dump_json(indent=2) + "\n")
    return card_path


def load_card(model_path: Path) -> ModelCard:
    """The card of ``model_path``: the one embedded in the ONNX file, with the file's sha256.

    If ``model.json`` is beside the file it must be a faithful copy: its sha256 must be the
    file's, and every other field must equal the embedded card's. Raises :class:`CardError`
    naming the file(s) and what is wrong.
    """
    if not model_path.is_file():
        raise CardError(f"model file {str(model_path)!r} does not exist")
    card = _embedded_card(model_path).model_copy(update={"sha256": sha256_file(model_path)})
    copy_path = card_path_for(model_path)
    if copy_path.exists():
        _check_copy(card, _read_card_file(copy_path), model_path, copy_path)
    return card


def _embedded_card(model_path: Path) -> ModelCard:
    try:
        metadata = read_onnx_metadata(model_path)
    except (OSError, MetadataError) as exc:
        raise CardError(f"{model_path}: cannot read the ONNX file's metadata: {exc}") from exc
    raw = metadata.get(CARD_METADATA_KEY)
    if raw is None:
        raise CardError(
            f"{model_path} has no {CARD_METADATA_KEY!r} in its metadata; export it with model_export"
        )
    try:
        return ModelCard.model_validate_json(raw)
    except ValueError as exc:
        raise CardError(f"{model_path}: invalid model card in its metadata: {exc}") from exc


def _read_card_file(card_path: Path) -> ModelCard:
    try:
        return ModelCard.model_validate(json.loads(card_path.read_text()))
    except OSError as exc:
        raise CardError(f"model card {card_path} cannot be read: {exc}") from exc
    except ValueError as exc:
        raise CardError(f"model card {card_path} is invalid: {exc}") from exc


def _check_copy(card: ModelCard, copy: ModelCard, model_path: Path, copy_path: Path) -> None:
    if copy.sha256 is not None and copy.sha256 != card.sha256:
        raise CardError(
            f"{model_path} has sha256 {card.sha256}, but {copy_path} says {copy.sha256}: "
            "the model and its model.json do not belong together"
        )
    difference = first_difference(
        card.model_dump(mode="json", exclude={"sha256"}), copy.model_dump(mode="json", exclude={"sha256"})
    )
    if difference is not None:
        where, embedded, copied = difference
        raise CardError(
            f"{copy_path} disagrees with the card embedded in {model_path} at {where!r}: "
            f"{_shorten(copied)} in model.json, {_shorten(embedded)} in the ONNX file. The embedded "
            "card is the one that was exported and evaluated; re-export the model, or delete "
            "model.json to serve the embedded card"
        )


def first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first place (``labels[3]``, ``preprocessing.crop_size``) where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            found = first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found is not None:
                return found
        if len(a) != len(b):
            return f"{path} (length)", len(a), len(b)
        return None
    return None if a == b else (path, a, b)


def _shorten(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
