"""Response models: these are the OpenAPI documentation of the API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.inference.postprocess import ClassScore
from model_card import Explanation, Preprocessing


class ErrorResponse(BaseModel):
    """Every error, whatever its status."""

    detail: str = Field(
        examples=["file #2 'notes.txt': not a decodable image (allowed formats: BMP, GIF, JPEG, PNG, WEBP)"]
    )


class CropBoxInfo(BaseModel):
    """The part of the photo the model saw (its centre crop), in the photo's pixels (EXIF
    orientation applied, as viewers show it)."""

    left: float = Field(examples=[93.95])
    top: float = Field(examples=[18.75])
    width: float = Field(examples=[263.09])
    height: float = Field(examples=[262.5])


class ClassMapInfo(BaseModel):
    """Where the model saw one class: rows (top to bottom) of cells (left to right), in [0, 1]."""

    index: int = Field(examples=[281])
    label: str = Field(examples=["tabby"])
    heatmap: list[list[float]] = Field(description="The map over the box, 4 decimals.")


class ExplanationInfo(BaseModel):
    """The class activation maps of the listed classes that the model explains, most probable
    first, and the box they cover."""

    method: Literal["cam", "grad-cam"]
    box: CropBoxInfo
    maps: list[ClassMapInfo]


class ImagePrediction(BaseModel):
    filename: str | None = Field(
        description="The multipart part's filename; null for a raw body.", examples=["cat.jpg"]
    )
    top_k: list[ClassScore] = Field(description="The k most probable classes, most probable first.")
    explanation: ExplanationInfo | None = Field(
        default=None, description="Only with explain=true: where the model saw each listed class."
    )


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": "efficientnet_lite0_imagenet",
                    "model_version": "1.0.0",
                    "predictions": [
                        {
                            "filename": "cat.jpg",
                            "top_k": [
                                {"index": 281, "label": "tabby", "probability": 0.61},
                                {"index": 282, "label": "tiger cat", "probability": 0.22},
                            ],
                        }
                    ],
                }
            ]
        },
    )

    model: str = Field(description="The model card's name.")
    model_version: str = Field(description="The model card's version.")
    predictions: list[ImagePrediction] = Field(description="One per image, in request order.")


class HealthResponse(BaseModel):
    status: str = Field(examples=["ok"])


class TensorInfo(BaseModel):
    name: str
    layout: str
    dtype: str
    shape: list[int | None] = Field(description="null for the dynamic batch axis.")


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_delay_ms: float
    max_queue_images: int
    request_timeout_s: float
    warmup_batch_sizes: list[int]


class LimitsInfo(BaseModel):
    max_upload_bytes: int
    max_images_per_request: int
    max_image_pixels: int
    max_request_pixels: int = Field(
        description="Pixels one request's images may decode to together (JPEG draft scaling counted)."
    )
    allowed_formats: list[str]


class ModelInfo(BaseModel):
    """The model card as served, with how this process runs it."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    architecture: str
    weights: str
    num_classes: int
    labels: list[str]
    input: TensorInfo
    output: TensorInfo
    preprocessing: Preprocessing
    precision: str = Field(
        description="The arithmetic that runs (fp32, fp16, bf16, int8): the card's, unless the provider "
        "cannot run it.",
        examples=["int8"],
    )
    dataset: dict[str, Any]
    metrics: dict[str, Any]
    created_at: str
    sha256: str | None
    explanation: Explanation | None = Field(
        default=None, description="How the model explains its answers (explain=true); null: it does not."
    )
    execution_provider: str = Field(
        description="What runs the model: an ONNX Runtime provider, or OpenVINO.",
        examples=["CPUExecutionProvider", "OpenVINO"],
    )
    providers: list[str] = Field(description="All providers of the session, in priority order.")
    batching: BatchingInfo
    limits: LimitsInfo


class VersionStateInfo(BaseModel):
    """One model version's state (Triton's repository index entry)."""

    name: str
    version: str | None = Field(description="null when the failure came before a version was known.")
    state: Literal["LOADING", "READY", "UNLOADING", "UNAVAILABLE"]
    reason: str = Field(description="Why it is unavailable (a failed load's error, 'unloaded'); else empty.")


class ModelList(BaseModel):
    models: list[ModelInfo] = Field(description="Every version served, by name and version.")
    versions: list[VersionStateInfo] = Field(
        description="Every version known: loading, ready, unloading, or unavailable with the reason."
    )
    default_model: str | None = Field(description="The model that answers /predict; null: none, name one.")


class VersionStatusDetail(BaseModel):
    """TensorFlow Serving's status of a model version: "OK" and no message when it serves."""

    error_code: str = Field(examples=["OK"])
    error_message: str = Field(examples=[""])


class TFServingVersionStatus(BaseModel):
    """One served version in TensorFlow Serving's model status shape."""

    version: str = Field(examples=["1"])
    state: str = Field(
        examples=["AVAILABLE"], description="LOADING, AVAILABLE, UNLOADING (also while draining), or END."
    )
    status: VersionStatusDetail


class ModelStatusInfo(ModelInfo):
    """The model card, plus the status of every served version of the name as TensorFlow Serving
    reports it (`GET /v1/models/{name}` is also TF Serving's model status API)."""

    model_version_status: list[TFServingVersionStatus]
