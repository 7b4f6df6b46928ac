"""TensorFlow Serving's REST predict API (KServe's v1 protocol follows it), on the same batcher.

    POST /v1/models/{name}[/versions/{version}]:predict
    {"instances": [{"b64": "<base64 image>"}, ...]}          -> {"predictions": [...]}
    {"inputs": [{"b64": "<base64 image>"}, ...]}             -> {"outputs": {...}}  (columnar)

Binary data travels as ``{"b64": ...}``, TF Serving's convention; an instance may also name its
input (``{"image_bytes": {"b64": ...}}``, as Google's AI Platform examples do). Each prediction
is the labelled top-k: ``classes`` (indices), ``labels`` and ``scores`` (probabilities,
descending), plus ``probabilities`` (every class) with ``?probabilities=true``, and with
``?explain=true`` the class activation maps of the listed classes (``explanation_maps``,
``explanation_classes``) and the crop they cover (``explanation_box``: left, top, width,
height in the photo's pixels); ``?top_k=`` as on ``/predict``. Errors are
``{"error": message}`` like TF Serving's. The model status API is ``GET /v1/models/{name}``
(app/api/models.py) and ``GET /v1/models/{name}/versions/{v}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from app.api.models import describe_model
from app.api.openapi import TF_SERVING_REQUEST_BODY, TF_SERVING_RESPONSES
from app.api.tfserving_codec import parse_request
from app.api.version_status import with_version_status
from app.dataplane import InferenceRequest
from app.http.deps import TOP_K_DESCRIPTION, StateDep, WholeNumber
from app.http.errors import ErrorBodyRoute
from app.http.inference import infer_body
from app.http.paths import model_routes
from app.inference.model import MAX_TOP_K
from app.inference.postprocess import Classification
from app.schemas import ModelStatusInfo


class TFServingRoute(ErrorBodyRoute):
    protocol = "tf_serving"


router = APIRouter(route_class=TFServingRoute, tags=["TensorFlow Serving predict API"])

TopK = Annotated[int | None, Query(ge=1, le=MAX_TOP_K, description=TOP_K_DESCRIPTION), WholeNumber]
WithProbabilities = Annotated[bool, Query(description="Also return every class's probability.")]
Explain = Annotated[
    bool,
    Query(
        description="Also return where the model saw each listed class: explanation_maps, "
        "explanation_classes and explanation_box (400 for a model that does not explain)."
    ),
]


@model_routes(
    router,
    "/v1/models/{name}:predict",
    methods=["POST"],
    versioned_name="predict_version",
    versioned_description="Classify base64 images with one version of the model, TF Serving style.",
    responses=TF_SERVING_RESPONSES,
    openapi_extra={"requestBody": TF_SERVING_REQUEST_BODY},
)
async def predict(
    name: str,
    request: Request,
    top_k: TopK = None,
    probabilities: WithProbabilities = False,
    explain: Explain = False,
    version: str | None = None,
) -> dict[str, Any]:
    """Classify base64 images, TF Serving style (the latest version of the model)."""
    head = InferenceRequest((), name, version, top_k, explain, TFServingRoute.protocol)
    result, columnar = await infer_body(request, head, parse_request)
    predictions = [prediction(r, probabilities) for r in result.classifications]
    if columnar:
        return {"outputs": {key: [p[key] for p in predictions] for key in predictions[0]}}
    return {"predictions": predictions}


@router.get(
    "/v1/models/{name}/versions/{version}",
    response_model=ModelStatusInfo,
    responses={404: TF_SERVING_RESPONSES[404], 503: TF_SERVING_RESPONSES[503]},
)
async def model_version_status(name: str, version: str, state: StateDep) -> ModelStatusInfo:
    """One version's card with its TensorFlow Serving status."""
    model = state.get_model(name, version)
    return with_version_status(describe_model(model, state.settings), state, model.version)


def prediction(result: Classification, with_probabilities: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "classes": [score.index for score in result.top_k],
        "labels": [score.label for score in result.top_k],
        "scores": [score.probability for score in result.top_k],
    }
    if with_probabilities:
        entry["probabilities"] = result.probabilities.tolist()
    explanation = result.explanation
    if explanation is not None:
        entry["explanation_maps"] = [m.rounded() for m in explanation.maps]
        entry["explanation_classes"] = [m.index for m in explanation.maps]
        box = explanation.box
        entry["explanation_box"] = [box.left, box.top, box.width, box.height]
    return entry
