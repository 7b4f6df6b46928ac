"""The served model: its card, the execution provider and the batching settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.api.deps import NOT_READY, error_response, get_state
from app.errors import ServiceError
from app.schemas import BatchingInfo, LimitsInfo, ModelInfo, ModelList, TensorInfo
from app.state import AppState

router = APIRouter(tags=["models"])


class ModelNotFoundError(ServiceError):
    status_code = 404


@router.get("/v1/models", response_model=ModelList, responses=NOT_READY)
async def list_models(state: Annotated[AppState, Depends(get_state)]) -> ModelList:
    """Every model this server serves (one today), with its card and how it is run."""
    return ModelList(models=[describe_model(state)])


@router.get(
    "/v1/models/{name}",
    response_model=ModelInfo,
    responses={
        **NOT_READY,
        404: error_response("No model of that name."),
        422: error_response("Invalid path parameter."),
    },
)
async def get_model(name: str, state: Annotated[AppState, Depends(get_state)]) -> ModelInfo:
    """One model by the name in its card."""
    info = describe_model(state)
    if name != info.name:
        raise ModelNotFoundError(f"no model named {name!r}; this server serves {info.name!r}")
    return info


def describe_model(state: AppState) -> ModelInfo:
    pipeline = state.get_pipeline()
    engine, settings = pipeline.engine, state.settings
    card = engine.card
    input_shape: list[int | None] = [None, *card.input_shape]
    return ModelInfo(
        name=card.name,
        version=card.version,
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
        precision=card.precision,
        dataset=card.dataset,
        metrics=card.metrics,
        created_at=card.created_at,
        sha256=card.sha256,
        execution_provider=engine.execution_provider,
        providers=engine.providers,
        batching=BatchingInfo(
            max_batch_size=settings.max_batch_size,
            max_delay_ms=settings.max_delay_ms,
            max_queue_images=settings.max_queue_images,
            request_timeout_s=settings.request_timeout_s,
            warmup_batch_sizes=settings.warmup_batch_sizes or [],
        ),
        limits=LimitsInfo(
            max_upload_bytes=settings.max_upload_bytes,
            max_images_per_request=settings.max_images_per_request,
            max_image_pixels=settings.max_image_pixels,
            allowed_formats=settings.allowed_formats,
        ),
    )
