"""TensorFlow Serving's REST predict API (KServe's v1 protocol follows it), on the same batcher.

    POST /v1/models/{name}[/versions/{version}]:predict
    {"instances": [{"b64": "<base64 image>"}, ...]}          -> {"predictions": [...]}
    {"inputs": [{"b64": "<base64 image>"}, ...]}             -> {"outputs": {...}}  (columnar)

Binary data travels as ``{"b64": ...}``, TF Serving's convention; an instance may also name its
input (``{"image_bytes": {"b64": ...}}``, as Google's AI Platform examples do). Each prediction
is the labelled top-k: ``classes`` (indices), ``labels`` and ``scores`` (probabilities,
descending), plus ``probabilities`` (every class) with ``?probabilities=true``; ``?top_k=``
as on ``/predict``. Errors are ``{"error": message}`` like TF Serving's. The model status API
is ``GET /v1/models/{name}`` (app/api/models.py) and ``GET /v1/models/{name}/versions/{v}``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from app.api.body import read_body
from app.api.deps import TOP_K_DESCRIPTION, StateDep, WholeNumber
from app.api.disconnect import unless_disconnected
from app.api.error_routes import ERROR_BODY_STATUS, ErrorBodyRoute, error_body_schema
from app.api.models import describe_model
from app.api.version_status import with_version_status
from app.errors import BadRequestError, PayloadTooLargeError
from app.inference.deadline import request_deadline
from app.inference.model import MAX_TOP_K, NamedImage
from app.inference.postprocess import Classification
from app.middleware import get_request_context
from app.schemas import ModelStatusInfo
from app.state import AppState
from app.v2.codec import CodecError, decode_base64


class TFServingRoute(ErrorBodyRoute):
    protocol = "tf_serving"
    status_table = ERROR_BODY_STATUS


router = APIRouter(route_class=TFServingRoute, tags=["TensorFlow Serving predict API"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_body_schema(
        "Malformed request: not JSON, no instances/inputs, bad base64, an image that cannot be "
        "decoded or is not an allowed format, or a bad parameter."
    ),
    404: error_body_schema("No model of that name, or no such version of it."),
    413: error_body_schema("Too large: body bytes, image pixels or number of images."),
    415: error_body_schema("A Content-Encoding other than gzip or deflate."),
    500: error_body_schema("The model failed on the batch that held this request's images."),
    503: error_body_schema("Overloaded (the queue is full), loading or draining.", retry_after=True),
    504: error_body_schema("Not finished within the request deadline."),
}
_IMAGE = {
    "type": "object",
    "properties": {"b64": {"type": "string", "description": "The encoded image, base64"}},
    "required": ["b64"],
}
REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "signature_name": {"type": "string"},
                    "instances": {"type": "array", "items": _IMAGE, "minItems": 1},
                    "inputs": {"type": "array", "items": _IMAGE, "minItems": 1},
                },
            },
            "example": {"instances": [{"b64": "/9j/4AAQSkZJRg..."}]},
        }
    },
}
TopK = Annotated[int | None, Query(ge=1, le=MAX_TOP_K, description=TOP_K_DESCRIPTION), WholeNumber]
WithProbabilities = Annotated[bool, Query(description="Also return every class's probability.")]


@router.post("/v1/models/{name}:predict", responses=RESPONSES, openapi_extra={"requestBody": REQUEST_BODY})
async def predict(
    name: str, request: Request, state: StateDep, top_k: TopK = None, probabilities: WithProbabilities = False
) -> dict[str, Any]:
    """Classify base64 images, TF Serving style (the latest version of the model)."""
    return await run_predict(request, state, name, None, top_k, probabilities)


@router.post(
    "/v1/models/{name}/versions/{version}:predict",
    responses=RESPONSES,
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def predict_version(
    name: str,
    version: str,
    request: Request,
    state: StateDep,
    top_k: TopK = None,
    probabilities: WithProbabilities = False,
) -> dict[str, Any]:
    """Classify base64 images with one version of the model, TF Serving style."""
    return await run_predict(request, state, name, version, top_k, probabilities)


@router.get(
    "/v1/models/{name}/versions/{version}",
    response_model=ModelStatusInfo,
    responses={404: RESPONSES[404], 503: RESPONSES[503]},
)
async def model_version_status(name: str, version: str, state: StateDep) -> ModelStatusInfo:
    """One version's card with its TensorFlow Serving status."""
    model = state.get_model(name, version)
    return with_version_status(describe_model(model, state.settings), state, model.version)


async def run_predict(
    request: Request,
    state: AppState,
    name: str,
    version: str | None,
    top_k: int | None,
    with_probabilities: bool,
) -> dict[str, Any]:
    if top_k is not None:
        state.get_model(name, version).check_top_k(top_k)  # before the body is read
    else:
        state.get_model(name, version)  # an unknown model is 404 before the body is read
    settings = state.settings
    async with request_deadline(settings.request_timeout_s):
        body = await read_body(request, settings.max_upload_bytes)
        columnar, encoded = parse_request(body, settings.max_images_per_request)
        # Resolved again now, with no await before classify: a version swapped in while the body
        # was read answers, and a retired one never admits a request (docs/ARCHITECTURE.md).
        model = state.get_model(name, version)
        k = model.default_top_k if top_k is None else top_k
        context = get_request_context(request.scope)
        if context is not None:
            context.images = len(encoded)
        images = [NamedImage(f"instance #{i}", data) for i, data in enumerate(encoded)]
        results = await unless_disconnected(model.classify(images, k), request)
    state.metrics.count_images(TFServingRoute.protocol, len(results))
    predictions = [prediction(result, with_probabilities) for result in results]
    if columnar:
        return {"outputs": {key: [p[key] for p in predictions] for key in predictions[0]}}
    return {"predictions": predictions}


def prediction(result: Classification, with_probabilities: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "classes": [score.index for score in result.top_k],
        "labels": [score.label for score in result.top_k],
        "scores": [score.probability for score in result.top_k],
    }
    if with_probabilities:
        entry["probabilities"] = result.probabilities.tolist()
    return entry


def parse_request(body: bytes, max_images: int) -> tuple[bool, list[bytes]]:
    """(columnar?, the images) of a TF Serving request body."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict) or ("instances" in request) == ("inputs" in request):
        raise BadRequestError('send a JSON object with either "instances" (rows) or "inputs" (columns)')
    columnar = "inputs" in request
    items = _columns(request["inputs"]) if columnar else request["instances"]
    if not isinstance(items, list) or not items:
        raise BadRequestError('"instances" must be a non-empty list, e.g. [{"b64": "<base64 image>"}]')
    if len(items) > max_images:
        raise PayloadTooLargeError(f"more than {max_images} images in one request (max_images_per_request)")
    return columnar, [_image(item, i) for i, item in enumerate(items)]


def _columns(inputs: object) -> object:
    """Columnar ``inputs``: a list of images, one image, or one named input holding either."""
    if isinstance(inputs, dict) and "b64" not in inputs and len(inputs) == 1:
        inputs = next(iter(inputs.values()))
    return inputs if isinstance(inputs, list) else [inputs]


def _image(item: object, index: int) -> bytes:
    """``{"b64": ...}``, or an instance with one named input holding it."""
    if isinstance(item, dict) and "b64" not in item and len(item) == 1:
        item = next(iter(item.values()))
    if not isinstance(item, dict) or set(item) != {"b64"}:
        raise BadRequestError(f'instance #{index}: expected {{"b64": "<base64 image>"}}, got {_shown(item)}')
    try:
        return decode_base64(item["b64"], f"instance #{index}")
    except CodecError as exc:
        raise BadRequestError(exc.message) from exc


def _shown(value: object) -> str:
    text = json.dumps(value)  # it came from JSON
    return text if len(text) <= 80 else text[:77] + "..."
