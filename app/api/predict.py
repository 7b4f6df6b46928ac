"""POST /predict: images in (multipart parts named ``file`` or a raw image body), top-k out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from app.api.errors import error_response
from app.api.openapi import PREDICT_REQUEST_BODY, PREDICT_RESPONSES
from app.api.uploads import Upload, read_uploads
from app.dataplane import InferenceRequest
from app.http.deps import TOP_K_DESCRIPTION, StateDep, WholeNumber
from app.http.disconnect import client_gone
from app.inference.model import MAX_TOP_K
from app.middleware import get_request_context
from app.schemas import ImagePrediction, PredictResponse
from app.state import AppState

router = APIRouter(tags=["inference"])

TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K, description=TOP_K_DESCRIPTION), WholeNumber]
ModelName = Annotated[str, Path(description="A served model's name.")]
ModelVersion = Annotated[str, Path(description="One of its served versions.")]
_ROUTE_OPTIONS: dict[str, Any] = {
    "response_model": PredictResponse,
    "openapi_extra": {"requestBody": PREDICT_REQUEST_BODY},
}
_NAMED_RESPONSES = {**PREDICT_RESPONSES, 404: error_response("No served model (or version) of that name.")}


@router.post("/predict", responses=PREDICT_RESPONSES, **_ROUTE_OPTIONS)
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
    request: Request, state: AppState, top_k: int, name: str | None = None, version: str | None = None
) -> PredictResponse:
    """Read the images, classify them with the model asked for, name the version that answered."""
    explicit_top_k = top_k if "top_k" in request.query_params else None
    dataplane = state.get_dataplane()

    async def read() -> tuple[InferenceRequest, list[Upload]]:
        uploads = await read_uploads(request, dataplane.limits, dataplane.parse_pool)
        return InferenceRequest(uploads, name, version, explicit_top_k), uploads

    result, uploads = await dataplane.run(
        name,
        version,
        read,
        top_k=explicit_top_k,
        record=get_request_context(request.scope),
        gone=client_gone(request),
    )
    return PredictResponse(
        model=result.model_name,
        model_version=result.model_version,
        predictions=[
            ImagePrediction(filename=upload.filename, top_k=result.top_k)
            for upload, result in zip(uploads, result.classifications, strict=True)
        ],
    )
