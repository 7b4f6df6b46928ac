"""The served models: each card, the execution provider and the batching settings."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.errors import NOT_READY, error_response
from app.api.version_status import with_version_status
from app.config import Settings
from app.http.deps import StateDep
from app.inference.errors import InferenceError
from app.inference.model import ServedModel
from app.schemas import (
    BatchingInfo,
    LimitsInfo,
    ModelInfo,
    ModelList,
    ModelStatusInfo,
    TensorInfo,
    VersionStateInfo,
)
from app.state import AppState

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, responses=NOT_READY)
async def list_models(state: StateDep) -> ModelList:
    """Every model version this server serves, with its card and how it is run, and the state of
    every version it knows (loading, ready, unloading, or unavailable with the reason)."""
    models = [describe_model(model, state.settings) for model in state.served_models()]
    return ModelList(models=models, versions=version_statuses(state), default_model=default_model_name(state))


def version_statuses(state: AppState) -> list[VersionStateInfo]:
    return [
        VersionStateInfo(name=s.name, version=s.version, state=s.state.value, reason=s.reason)
        for s in state.registry.statuses()
    ]


def default_model_name(state: AppState) -> str | None:
    try:
        return state.registry.default().name
    except InferenceError:
        return None


@router.get(
    "/v1/models/{name}",
    response_model=ModelStatusInfo,
    responses={
        **NOT_READY,
        404: error_response("No model of that name."),
        422: error_response("Invalid path parameter."),
    },
)
async def get_model(name: str, state: StateDep) -> ModelStatusInfo:
    """One model by the name in its card, with TensorFlow Serving's `model_version_status`."""
    return with_version_status(describe_model(state.get_model(name), state.settings), state)


def describe_model(model: ServedModel, settings: Settings) -> ModelInfo:
    card = model.card
    input_shape: list[int | None] = [None, *card.input_shape]
    return ModelInfo(
        name=model.name,
        version=model.version,
        architecture=card.architecture,
        weights=card.weights,
        num_classes=card.num_classes,
        labels=card.labels,
        input=TensorInfo(
            name=card.input.name, layout=card.input.layout, dtype=card.input.dtype, shape=input_shape
        ),
        output=TensorInfo(
            name=card.output.name,
            layout=card.output.layout,
            dtype=card.output.dtype,
            shape=[None, card.num_classes],
        ),
        preprocessing=card.preprocessing,
        precision=model.precision,
        dataset=card.dataset,
        metrics=card.metrics,
        created_at=card.created_at,
        sha256=card.sha256,
        explanation=card.explanation,
        execution_provider=model.execution_provider,
        providers=model.providers,
        batching=BatchingInfo(
            max_batch_size=model.batching.max_batch_size,
            max_delay_ms=model.batching.max_delay_ms,
            max_queue_images=model.batching.max_queue_images,
            request_timeout_s=settings.request_timeout_s,
            warmup_batch_sizes=model.warmup_batch_sizes,
        ),
        limits=LimitsInfo(
            max_upload_bytes=settings.max_upload_bytes,
            max_images_per_request=settings.max_images_per_request,
            max_image_pixels=settings.max_image_pixels,
            max_request_pixels=settings.max_request_pixels,
            allowed_formats=settings.allowed_formats,
        ),
    )
