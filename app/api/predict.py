"""POST /predict: images in (multipart parts named ``file`` or a raw image body), top-k out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from app.api.deps import NOT_READY, StateDep, error_response
from app.api.disconnect import unless_disconnected
from app.api.uploads import FILE_FIELD, FORMAT_MEDIA_TYPES, OCTET_STREAM, UploadLimits, read_uploads
from app.config import SUPPORTED_FORMATS
from app.inference.deadline import request_deadline
from app.inference.postprocess import Classification
from app.middleware import get_request_context
from app.schemas import ClassScore, ImagePrediction, PredictResponse

router = APIRouter(tags=["inference"])

_BINARY = {"type": "string", "format": "binary"}
_IMAGE_TYPES = [t for fmt in SUPPORTED_FORMATS for t in FORMAT_MEDIA_TYPES[fmt][:1]]
REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "Either multipart/form-data with one or more parts named `file` (one image each), "
        "or the bytes of one image as the raw body with its image content type."
    ),
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    FILE_FIELD: {
                        "type": "array",
                        "minItems": 1,
                        "items": {**_BINARY, "contentMediaType": "application/octet-stream"},
                        "description": "Images (JPEG, PNG, WebP, BMP or GIF), one per part.",
                    }
                },
                "required": [FILE_FIELD],
            }
        },
        **{
            media_type: {"schema": {**_BINARY, "contentMediaType": media_type}} for media_type in _IMAGE_TYPES
        },
        OCTET_STREAM: {"schema": {**_BINARY, "contentMediaType": OCTET_STREAM}},
    },
}

RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_response("Malformed request (a multipart body without boundary, a client that left)."),
    413: error_response("Too large: body bytes, image pixels or number of images."),
    415: error_response("Unsupported content type or image format."),
    422: error_response("Undecodable image, malformed multipart body or bad parameter."),
    **NOT_READY,
    500: error_response("The model failed on the batch that held this request's images."),
    504: error_response("Not finished within the request deadline."),
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=RESPONSES,
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def predict(
    request: Request,
    state: StateDep,
    top_k: Annotated[
        int,
        Query(
            ge=1,
            description="Classes per image: 1 to the number of classes (default 5, or all if fewer).",
        ),
    ] = 5,
) -> PredictResponse:
    """Classify one or more images; the top-k classes with probabilities for each, in request order."""
    model = state.get_model()
    if "top_k" not in request.query_params:
        top_k = model.default_top_k
    model.check_top_k(top_k)  # before the body is read
    settings = state.settings
    limits = UploadLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_images_per_request=settings.max_images_per_request,
        allowed_formats=frozenset(settings.allowed_formats),
    )
    async with request_deadline(settings.request_timeout_s):
        uploads = await read_uploads(request, limits)
        context = get_request_context(request.scope)
        if context is not None:
            context.images = len(uploads)
        results = await unless_disconnected(model.classify(uploads, top_k), request)
    state.metrics.count_images("rest", len(results))
    return PredictResponse(
        model=model.name,
        model_version=model.version,
        predictions=[
            ImagePrediction(filename=upload.filename, top_k=_scores(result))
            for upload, result in zip(uploads, results, strict=True)
        ],
    )


def _scores(result: Classification) -> list[ClassScore]:
    return [ClassScore(index=s.index, label=s.label, probability=s.probability) for s in result.top_k]
