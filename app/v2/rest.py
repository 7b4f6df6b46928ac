"""The Open Inference Protocol ("KServe v2", Triton's HTTP protocol) over REST: ``/v2/...``.

A thin front end: it reads the body with the same byte limit as ``/predict`` (gzip and deflate
bodies too), parses it with :mod:`app.v2.codec`, calls the same ``ServedModel.classify`` (so
its images join the same batches as ``/predict``'s) under the same deadline, and maps the
core's errors to the protocol's statuses (``app.api.error_routes.ERROR_BODY_STATUS``, shared
with TF Serving's API) with the protocol's ``{"error": message}`` body.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from app.api.body import read_body
from app.api.deps import StateDep
from app.api.disconnect import unless_disconnected
from app.api.error_routes import ERROR_BODY_STATUS, ErrorBodyRoute, error_body_schema
from app.errors import BadRequestError, PayloadTooLargeError
from app.inference.deadline import request_deadline
from app.inference.model import NamedImage, ServedModel
from app.middleware import get_request_context
from app.state import AppState
from app.v2 import codec, metadata

HEADER_LENGTH = "Inference-Header-Content-Length"


class V2Route(ErrorBodyRoute):
    protocol = "v2_http"
    status_table = ERROR_BODY_STATUS


TAGS: list[str | Any] = ["Open Inference Protocol (v2)"]
router = APIRouter(route_class=V2Route, tags=TAGS)
# Probes, like /healthz and /readyz, never need an API key.
health_router = APIRouter(route_class=V2Route, tags=TAGS)

_NOT_READY = error_body_schema("Not ready: loading or draining.", retry_after=True)
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: error_body_schema("No model of that name, or no such version of it."),
    503: _NOT_READY,
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "The requested outputs. JSON, or with binary outputs (`binary_data`, "
            "`binary_data_output`) the JSON header of `Inference-Header-Content-Length` bytes "
            "followed by the outputs' bytes."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                    "required": ["model_name", "model_version", "outputs"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    400: error_body_schema(
        "Malformed request: not the protocol, wrong input name, datatype or shape, bad base64, "
        "or an image that cannot be decoded or is not an allowed format."
    ),
    404: MODEL_RESPONSES[404],
    413: error_body_schema("Too large: body bytes, decompressed bytes, image pixels or number of images."),
    415: error_body_schema("A Content-Encoding other than gzip or deflate."),
    500: error_body_schema("The model failed on the batch that held this request's images."),
    503: error_body_schema("Overloaded (the queue is full) or not ready.", retry_after=True),
    504: error_body_schema("Not finished within the request deadline."),
}

_TENSOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "example": codec.INPUT_NAME},
        "shape": {"type": "array", "items": {"type": "integer"}, "example": [1, 1]},
        "datatype": {"type": "string", "example": codec.BYTES},
        "parameters": {"type": "object"},
        "data": {"type": "array", "items": {}, "description": "One base64 string per image"},
    },
    "required": ["name", "shape", "datatype"],
}
INFER_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "A v2 inference request: one BYTES input named `image`, shape `[N, 1]`, one encoded "
        "image per element, as base64 strings in `data`; or the binary tensor extension (send "
        "`Inference-Header-Content-Length`: the JSON, then each image as a 4-byte little-endian "
        "length and its bytes); or one raw image with `Inference-Header-Content-Length: 0`. "
        "Ask for labels with `outputs: [{name: probs, parameters: {classification: k}}]`."
    ),
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {"type": "array", "items": _TENSOR_SCHEMA, "minItems": 1, "maxItems": 1},
                    "outputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                            "required": ["name"],
                        },
                    },
                },
                "required": ["inputs"],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


@health_router.get("/v2/health/live", responses={200: {"description": '`{"live": true}`'}})
async def server_live() -> dict[str, bool]:
    """The process is alive and its event loop answers."""
    return {"live": True}


@health_router.get(
    "/v2/health/ready",
    responses={200: {"description": '`{"ready": true}`'}, 503: {"description": '`{"ready": false}`'}},
)
async def server_ready(state: StateDep) -> JSONResponse:
    """Every model is loaded and warm and the server is not draining: 200 `{"ready": true}`, else 503."""
    ready = state.lifecycle.serving
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/v2")
async def server_metadata(request: Request) -> dict[str, Any]:
    """The server's name, version and the protocol extensions it supports."""
    return metadata.server_metadata(request.app.version)


# Before /v2/models/{name}: "stats" is this route, not a model's metadata.
@router.get("/v2/models/stats", responses={503: _NOT_READY})
async def all_statistics(state: StateDep) -> dict[str, Any]:
    """Statistics of every loaded model version (Triton's statistics extension)."""
    return metadata.model_statistics(state, None)


@router.get("/v2/models/{name}/stats", responses=MODEL_RESPONSES)
async def model_statistics(name: str, state: StateDep) -> dict[str, Any]:
    """Every loaded version's statistics: requests that succeeded and failed, queue and compute
    time, and the model runs by batch size (durations in nanoseconds)."""
    return metadata.model_statistics(state, name)


@router.get("/v2/models/{name}/versions/{version}/stats", responses=MODEL_RESPONSES)
async def model_version_statistics(name: str, version: str, state: StateDep) -> dict[str, Any]:
    """One version's statistics (Triton's statistics extension)."""
    return metadata.model_statistics(state, name, version)


@router.get("/v2/models/{name}", responses=MODEL_RESPONSES)
async def model_metadata(name: str, state: StateDep) -> dict[str, Any]:
    """A model's name, versions, platform, inputs and outputs (the latest version)."""
    return metadata.model_metadata(state, state.get_model(name))


@router.get("/v2/models/{name}/versions/{version}", responses=MODEL_RESPONSES)
async def model_version_metadata(name: str, version: str, state: StateDep) -> dict[str, Any]:
    """One version of a model: name, versions, platform, inputs and outputs."""
    return metadata.model_metadata(state, state.get_model(name, version))


@router.get("/v2/models/{name}/ready", responses=MODEL_RESPONSES)
async def model_ready(name: str, state: StateDep) -> JSONResponse:
    """200 `{"name", "version", "ready": true}` when the model serves; 503 while draining."""
    return readiness(state, state.get_model(name))


@router.get("/v2/models/{name}/versions/{version}/ready", responses=MODEL_RESPONSES)
async def model_version_ready(name: str, version: str, state: StateDep) -> JSONResponse:
    """Whether one version of a model serves."""
    return readiness(state, state.get_model(name, version))


def readiness(state: AppState, model: ServedModel) -> JSONResponse:
    ready = state.lifecycle.serving
    return JSONResponse(
        {"name": model.name, "version": model.version, "ready": ready}, status_code=200 if ready else 503
    )


@router.get("/v2/models/{name}/config", responses=MODEL_RESPONSES)
async def model_config(name: str, state: StateDep) -> dict[str, Any]:
    """The model's configuration in Triton's shape (the model configuration extension)."""
    return metadata.triton_config(state, state.get_model(name))


@router.get("/v2/models/{name}/versions/{version}/config", responses=MODEL_RESPONSES)
async def model_version_config(name: str, version: str, state: StateDep) -> dict[str, Any]:
    """One version's configuration in Triton's shape."""
    return metadata.triton_config(state, state.get_model(name, version))


@router.post(
    "/v2/models/{name}/infer", responses=INFER_RESPONSES, openapi_extra={"requestBody": INFER_REQUEST_BODY}
)
async def infer(
    name: str,
    request: Request,
    state: StateDep,
    header_length: Annotated[int | None, Header(alias=HEADER_LENGTH, ge=0)] = None,
) -> Response:
    """Classify the images of a v2 inference request (the latest version of the model)."""
    return await run_inference(request, state, name, None, header_length)


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    responses=INFER_RESPONSES,
    openapi_extra={"requestBody": INFER_REQUEST_BODY},
)
async def infer_version(
    name: str,
    version: str,
    request: Request,
    state: StateDep,
    header_length: Annotated[int | None, Header(alias=HEADER_LENGTH, ge=0)] = None,
) -> Response:
    """Classify the images of a v2 inference request with one version of the model."""
    return await run_inference(request, state, name, version, header_length)


async def run_inference(
    request: Request, state: AppState, name: str, version: str | None, header_length: int | None
) -> Response:
    state.get_model(name, version)  # an unknown model is 404 before the body is read
    settings = state.settings
    async with request_deadline(settings.request_timeout_s):
        body = await read_body(request, settings.max_upload_bytes)
        parsed = parse_request(body, header_length, settings.max_images_per_request)
        # Resolved again now, with no await before classify: a version swapped in while the body
        # was read answers, and a retired one never admits a request (docs/ARCHITECTURE.md).
        model = state.get_model(name, version)
        top_k = checked_top_k(model, parsed.top_k)
        context = get_request_context(request.scope)
        if context is not None:
            context.images = parsed.image_count
        if parsed.pixels is not None:
            work = model.classify_pixels(parsed.pixels, top_k)
        else:
            images = [NamedImage(f"{codec.INPUT_NAME}[{i}]", data) for i, data in enumerate(parsed.images)]
            work = model.classify(images, top_k)
        results = await unless_disconnected(work, request)
    state.metrics.count_images(V2Route.protocol, len(results))
    tensors = codec.build_outputs(results, parsed.outputs)
    content, json_length = codec.encode_rest_response(model.name, model.version, parsed.id, tensors)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)})


def parse_request(body: bytes, header_length: int | None, max_images: int) -> codec.InferRequest:
    try:
        return codec.parse_rest_request(body, header_length, max_images)
    except codec.TooManyImagesError as exc:
        raise PayloadTooLargeError(exc.message) from exc
    except codec.CodecError as exc:
        raise BadRequestError(exc.message) from exc


def checked_top_k(model: ServedModel, requested: int | None) -> int:
    """The classification count asked for (within the model's classes), else the default."""
    if requested is None:
        return model.default_top_k
    if requested > model.max_top_k:
        raise BadRequestError(f"classification must be between {model.top_k_range()}, got {requested}")
    return requested
