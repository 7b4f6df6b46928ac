"""POST /predict: images in (multipart parts named ``file`` or a raw image body), top-k out."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Query, Request

from app.api.errors import error_response
from app.api.openapi import PREDICT_REQUEST_BODY, PREDICT_RESPONSES
from app.api.uploads import Upload, read_uploads
from app.dataplane import InferenceRequest
from app.http.deps import TOP_K_DESCRIPTION, StateDep, WholeNumber
from app.http.disconnect import client_gone
from app.inference.model import MAX_TOP_K
from app.inference.postprocess import Classification
from app.middleware import get_request_context
from app.schemas import ClassMapInfo, CropBoxInfo, ExplanationInfo, ImagePrediction, PredictResponse
from app.state import AppState

router = APIRouter(tags=["inference"])

TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K, description=TOP_K_DESCRIPTION), WholeNumber]
Explain = Annotated[
    bool,
    Query(
        description="Also answer where the model saw each listed class: its class activation map "
        "over the part of the photo the model saw (400 for a model that does not explain)."
    ),
]
ModelName = Annotated[str, Path(description="A served model's name.")]
ModelVersion = Annotated[str, Path(description="One of its served versions.")]
_ROUTE_OPTIONS: dict[str, Any] = {
    "response_model": PredictResponse,
    # Without explain=true an answer is what it always was: no "explanation": null per image.
    "response_model_exclude_unset": True,
    "openapi_extra": {"requestBody": PREDICT_REQUEST_BODY},
}
_NAMED_RESPONSES = {**PREDICT_RESPONSES, 404: error_response("No served model (or version) of that name.")}


@router.post("/predict", responses=PREDICT_RESPONSES, **_ROUTE_OPTIONS)
async def predict(
    request: Request, state: StateDep, top_k: TopK = 5, explain: Explain = False
) -> PredictResponse:
    """Classify one or more images; the top-k classes with probabilities for each, in request order."""
    return await classify_request(request, state, top_k, explain=explain)


@router.post("/v1/models/{name}/predict", responses=_NAMED_RESPONSES, **_ROUTE_OPTIONS)
async def predict_with_model(
    name: ModelName, request: Request, state: StateDep, top_k: TopK = 5, explain: Explain = False
) -> PredictResponse:
    """Classify with the latest served version of the named model; the same contract as /predict."""
    return await classify_request(request, state, top_k, name, explain=explain)


@router.post("/v1/models/{name}/versions/{version}/predict", responses=_NAMED_RESPONSES, **_ROUTE_OPTIONS)
async def predict_with_version(
    name: ModelName,
    version: ModelVersion,
    request: Request,
    state: StateDep,
    top_k: TopK = 5,
    explain: Explain = False,
) -> PredictResponse:
    """Classify with one served version of the named model; the same contract as /predict."""
    return await classify_request(request, state, top_k, name, version, explain=explain)


async def classify_request(
    request: Request,
    state: AppState,
    top_k: int,
    name: str | None = None,
    version: str | None = None,
    *,
    explain: bool = False,
) -> PredictResponse:
    """Read the images, classify them with the model asked for, name the version that answered."""
    explicit_top_k = top_k if "top_k" in request.query_params else None
    dataplane = state.get_dataplane()

    async def read() -> tuple[InferenceRequest, list[Upload]]:
        uploads = await read_uploads(request, dataplane.limits, dataplane.parse_pool)
        return InferenceRequest(uploads, name, version, explicit_top_k, explain=explain), uploads

    result, uploads = await dataplane.run(
        name,
        version,
        read,
        top_k=explicit_top_k,
        explain=explain,
        record=get_request_context(request.scope),
        gone=client_gone(request),
    )
    return PredictResponse(
        model=result.model_name,
        model_version=result.model_version,
        predictions=[
            _prediction(upload.filename, classification)
            for upload, classification in zip(uploads, result.classifications, strict=True)
        ],
    )


def _prediction(filename: str | None, classification: Classification) -> ImagePrediction:
    explanation = classification.explanation
    if explanation is None:
        return ImagePrediction(filename=filename, top_k=classification.top_k)
    box = explanation.box
    return ImagePrediction(
        filename=filename,
        top_k=classification.top_k,
        explanation=ExplanationInfo(
            method=explanation.method,
            box=CropBoxInfo(left=box.left, top=box.top, width=box.width, height=box.height),
            maps=[
                ClassMapInfo(
                    index=m.index, label=m.label, heatmap=np.round(m.heatmap.astype(np.float64), 4).tolist()
                )
                for m in explanation.maps
            ],
        ),
    )
