"""What the server answers, as typed values: predictions, class scores, model descriptions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imgserve_client.errors import ImgserveError, ProtocolError


@dataclass(frozen=True)
class ClassScore:
    """One class of a prediction: its index in the model's output, its label, its probability."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class CropBox:
    """The part of the original image the model saw (its centre crop), in the original's pixels
    (EXIF orientation applied, as viewers show it)."""

    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class ClassMap:
    """Where the model saw one class: a grid of values in [0, 1] (rows of columns) over the crop."""

    index: int
    label: str
    heatmap: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Explanation:
    """The class activation maps of one image's top classes (most probable first) and the box
    they cover. ``method``: ``cam`` or ``grad-cam``."""

    method: str
    box: CropBox
    maps: tuple[ClassMap, ...]


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, most probable first; ``label``/``index``/``probability``
    are those of the first (most probable) class. ``explanation``: when asked for."""

    top_k: tuple[ClassScore, ...]
    filename: str | None
    model: str
    model_version: str
    explanation: Explanation | None = None

    @property
    def label(self) -> str:
        return self.top_k[0].label

    @property
    def index(self) -> int:
        return self.top_k[0].index

    @property
    def probability(self) -> float:
        return self.top_k[0].probability


@dataclass(frozen=True)
class Limits:
    """What one request may carry (``/v1/models`` → ``limits``, plus the queue size)."""

    max_upload_bytes: int
    max_images_per_request: int
    max_image_pixels: int
    allowed_formats: tuple[str, ...]
    max_queue_images: int


@dataclass(frozen=True)
class ModelInfo:
    """One served model as ``/v1/models`` describes it; ``raw`` holds the whole JSON object."""

    name: str
    version: str
    num_classes: int
    labels: tuple[str, ...]
    execution_provider: str
    max_batch_size: int
    limits: Limits
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Result:
    """One image of ``predict_many``: its prediction, or the error that stopped it.

    ``image`` is the input exactly as it was given (a path, bytes, a file object...), so a caller
    can tell which one this is; results arrive in completion order, not input order.
    """

    image: Any
    name: str
    prediction: Prediction | None = None
    error: ImgserveError | None = None

    @property
    def ok(self) -> bool:
        return self.prediction is not None


def parse_predictions(body: Any) -> list[Prediction]:
    """``POST /predict``'s JSON body as predictions, in request order."""
    try:
        model, version = str(body["model"]), str(body["model_version"])
        return [
            Prediction(
                top_k=tuple(
                    ClassScore(int(s["index"]), str(s["label"]), float(s["probability"])) for s in p["top_k"]
                ),
                filename=p.get("filename"),
                model=model,
                model_version=version,
                explanation=_explanation(p["explanation"]) if p.get("explanation") else None,
            )
            for p in body["predictions"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"unexpected /predict response: {exc!r} in {str(body)[:300]}") from exc


def _explanation(raw: dict[str, Any]) -> Explanation:
    box = raw["box"]
    return Explanation(
        method=str(raw["method"]),
        box=CropBox(float(box["left"]), float(box["top"]), float(box["width"]), float(box["height"])),
        maps=tuple(
            ClassMap(
                int(m["index"]),
                str(m["label"]),
                tuple(tuple(float(v) for v in row) for row in m["heatmap"]),
            )
            for m in raw["maps"]
        ),
    )


def parse_models(body: Any) -> list[ModelInfo]:
    """``GET /v1/models``'s JSON body as model descriptions."""
    try:
        return [_model_info(m) for m in body["models"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"unexpected /v1/models response: {exc!r} in {str(body)[:300]}") from exc


def _model_info(raw: dict[str, Any]) -> ModelInfo:
    limits, batching = raw["limits"], raw["batching"]
    return ModelInfo(
        name=str(raw["name"]),
        version=str(raw["version"]),
        num_classes=int(raw["num_classes"]),
        labels=tuple(str(label) for label in raw["labels"]),
        execution_provider=str(raw["execution_provider"]),
        max_batch_size=int(batching["max_batch_size"]),
        limits=Limits(
            max_upload_bytes=int(limits["max_upload_bytes"]),
            max_images_per_request=int(limits["max_images_per_request"]),
            max_image_pixels=int(limits["max_image_pixels"]),
            allowed_formats=tuple(str(f) for f in limits["allowed_formats"]),
            max_queue_images=int(batching["max_queue_images"]),
        ),
        raw=raw,
    )
