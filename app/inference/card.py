"""The model card: everything the server needs to use an exported model correctly.

The export stage (``model_export``) writes it; the server reads it and nothing else for
labels and preprocessing. It travels with the ONNX file twice: inside the file's
``metadata_props`` under :data:`CARD_METADATA_KEY` (without ``sha256``, which a file cannot
hold of itself), and as ``model.json`` beside the file (with ``sha256``).

This module must not import PyTorch: the serving image never installs it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CARD_METADATA_KEY = "model_card"
CARD_FILENAME = "model.json"
SCHEMA_VERSION = 1

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]


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
    precision: Literal["fp32", "fp16"] = "fp32"
    dataset: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    exporter: dict[str, str] = Field(default_factory=dict, description="Package versions that made the file.")
    created_at: str = ""
    sha256: str | None = Field(default=None, description="sha256 of the ONNX file; only in model.json.")

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


def write_card(card: ModelCard, model_path: Path) -> Path:
    """Write ``model.json`` beside ``model_path`` with the file's sha256 filled in."""
    card = card.model_copy(update={"sha256": sha256_file(model_path)})
    card_path = model_path.parent / CARD_FILENAME
    card_path.write_text(card.model_dump_json(indent=2) + "\n")
    return card_path


def card_from_metadata(metadata: dict[str, str], source: str) -> ModelCard:
    """Parse the card from an ONNX file's metadata_props (as ONNX Runtime returns them)."""
    raw = metadata.get(CARD_METADATA_KEY)
    if raw is None:
        raise CardError(f"{source} has no {CARD_METADATA_KEY!r} metadata; export it with model_export")
    try:
        return ModelCard.model_validate_json(raw)
    except ValueError as exc:
        raise CardError(f"{source}: invalid model card in metadata: {exc}") from exc


def load_card_file(card_path: Path) -> ModelCard:
    """Read ``model.json``; raise :class:`CardError` with the path if it is unusable."""
    try:
        return ModelCard.model_validate(json.loads(card_path.read_text()))
    except FileNotFoundError as exc:
        raise CardError(f"model card {card_path} does not exist") from exc
    except ValueError as exc:
        raise CardError(f"model card {card_path} is invalid: {exc}") from exc


def verify_sha256(card: ModelCard, model_path: Path) -> None:
    """Fail if the card names a sha256 and the file does not match it."""
    if card.sha256 is None:
        return
    actual = sha256_file(model_path)
    if actual != card.sha256:
        raise CardError(
            f"{model_path} has sha256 {actual}, but its card says {card.sha256}: "
            "the model and its model.json do not belong together"
        )
