"""POST /predict: images in (multipart parts named ``file`` or a raw image body), top-k out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from app.api.deps import NOT_READY, TOP_K_DESCRIPTION, StateDep, WholeNumber, error_response
from app.api.disconnect import unless_disconnected
from app.api.uploads import FILE_FIELD, FORMAT_MEDIA_TYPES, OCTET_STREAM, UploadLimits, read_uploads
from app.config import SUPPORTED_FORMATS
from app.inference.deadline import request_deadline
from app.inference.model import MAX_TOP_K
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


TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K, description=TOP_K_DESCRIPTION), WholeNumber]
ModelName = Annotated[str, Path(description="A served model's name.")]
ModelVersion = Annotated[str, Path(description="One of its served versions.")]
_ROUTE_OPTIONS: dict[str, Any] = {
    "response_model": PredictResponse,
    "openapi_extra": {"requestBody": REQUEST_BODY},
}
_NAMED_RESPONSES = {**RESPONSES, 404: error_response("No served model (or version) of that name.")}


@router.post("/predict", responses=RESPONSES, **_ROUTE_OPTIONS)
async def predict(request: Request, state: StateDep, top_k: TopK = 5) -> PredictResponse:
    """Classify one or more images; the top-k classes with probabilities for each, in request order."""
    return await classify_request(request, state, top_k)


@router.post("/v1/models/{name}/predict", responses=_NAMED_RESPONSES, **_ROUTE_OPTIONS)
async def predict_with_model(
    name: ModelName, request: Request, state: StateDep, top_k: TopK = 5
) -> PredictResponse:
    """Classify with the latest served version of the named model; the same contract as /predict."""
    return await classify_request(request, state, top_k, name)


@router.post("/v1/models/{name}/versions/{version}/predict", responses=_NAMED_RESPONSES, **_ROUTE_OPTIONS)
async def predict_with_version(
    name: ModelName, version: ModelVersion, request: Request, state: StateDep, top_k: TopK = 5
) -> PredictResponse:
    """Classify with one served version of the named model; the same contract as /predict."""
    return await classify_request(request, state, top_k, name, version)


async def classify_request(
    request: Request, state: StateDep, top_k: int, name: str | None = None, version: str | None = None
) -> PredictResponse:
    """Read the images, classify them with the model asked for, name the version that answered."""
    explicit_top_k = "top_k" in request.query_params
    model = state.get_model(name, version)
    if explicit_top_k:
        model.check_top_k(top_k)  # before the body is read
    settings = state.settings
    limits = UploadLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_images_per_request=settings.max_images_per_request,
        allowed_formats=frozenset(settings.allowed_formats),
    )
    async with request_deadline(settings.request_timeout_s):
        uploads = await read_uploads(request, limits, state.parse_pool)
        context = get_request_context(request.scope)
        if context is not None:
            context.images = len(uploads)
        # Again, now: a version swapped in while the body was read admits the request, and
        # classify must follow without an await, so a retired version never sees a new request.
        model = state.get_model(name, version)
        results = await unless_disconnected(
            model.classify(uploads, top_k if explicit_top_k else model.default_top_k), request
        )
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
