"""POST /predict: images in (multipart parts named ``file`` or a raw image body), top-k out."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from app.api.errors import error_response
from app.api.openapi import PREDICT_REQUEST_BODY, PREDICT_RESPONSES
from app.api.uploads import Upload, read_uploads
from app.dataplane import InferenceRequest
from app.http.deps import TOP_K_DESCRIPTION, WholeNumber
from app.http.inference import infer, request_dataplane
from app.http.paths import model_routes
from app.inference.model import MAX_TOP_K
from app.inference.postprocess import Classification
from app.schemas import ClassMapInfo, CropBoxInfo, ExplanationInfo, ImagePrediction, PredictResponse

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
async def predict(request: Request, top_k: TopK = 5, explain: Explain = False) -> PredictResponse:
    """Classify one or more images; the top-k classes with probabilities for each, in request order."""
    return await classify_request(request, top_k, explain)


@model_routes(
    router,
    "/v1/models/{name}/predict",
    methods=["POST"],
    versioned_name="predict_with_version",
    versioned_description="Classify with one served version of the named model; the same contract as "
    "/predict.",
    version=ModelVersion,
    responses=_NAMED_RESPONSES,
    **_ROUTE_OPTIONS,
)
async def predict_with_model(
    name: ModelName, request: Request, top_k: TopK = 5, explain: Explain = False, version: str | None = None
) -> PredictResponse:
    """Classify with the latest served version of the named model; the same contract as /predict."""
    return await classify_request(request, top_k, explain, name, version)


async def classify_request(
    request: Request, top_k: int, explain: bool, name: str | None = None, version: str | None = None
) -> PredictResponse:
    """Read the images, classify them with the model asked for, name the version that answered."""
    explicit_top_k = top_k if "top_k" in request.query_params else None
    dataplane = request_dataplane(request)

    async def read(head: InferenceRequest) -> tuple[InferenceRequest, list[Upload]]:
        uploads = await read_uploads(request, dataplane.limits, dataplane.parse_pool)
        return replace(head, images=uploads), uploads

    head = InferenceRequest((), name, version, explicit_top_k, explain)
    result, uploads = await infer(request, head, read)
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
            maps=[ClassMapInfo(index=m.index, label=m.label, heatmap=m.rounded()) for m in explanation.maps],
        ),
    )
