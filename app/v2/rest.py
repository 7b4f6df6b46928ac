"""The Open Inference Protocol ("KServe v2", Triton's HTTP protocol) over REST: ``/v2/...``.

A thin front end: it reads the body with the same byte limit as ``/predict`` (gzip and deflate
bodies too), parses it with :mod:`app.v2.codec` on the parse thread, hands the images to the
dataplane (the same batches as ``/predict``'s, the same deadline), and renders the answer and
the errors with the protocol's ``{"error": message}`` body (``app.http.errors.ERROR_BODY_STATUS``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from app.dataplane import DataPlane, InferenceRequest
from app.http.deps import StateDep
from app.http.errors import ErrorBodyRoute
from app.http.inference import infer_body
from app.http.paths import model_routes
from app.v2 import codec, metadata
from app.v2.openapi import INFER_REQUEST_BODY, INFER_RESPONSES, MODEL_RESPONSES

HEADER_LENGTH = "Inference-Header-Content-Length"


class V2Route(ErrorBodyRoute):
    protocol = "v2_http"


TAGS: list[str | Any] = ["Open Inference Protocol (v2)"]
router = APIRouter(route_class=V2Route, tags=TAGS)
# Probes, like /healthz and /readyz, never need an API key.
health_router = APIRouter(route_class=V2Route, tags=TAGS)
_MODEL: dict[str, Any] = {"methods": ["GET"], "responses": MODEL_RESPONSES}


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
@router.get("/v2/models/stats", responses={503: MODEL_RESPONSES[503]})
async def all_statistics(state: StateDep) -> dict[str, Any]:
    """Statistics of every loaded model version (Triton's statistics extension)."""
    return metadata.model_statistics(state, None)


@model_routes(
    router,
    "/v2/models/{name}/stats",
    versioned_name="model_version_statistics",
    versioned_description="One version's statistics (Triton's statistics extension).",
    **_MODEL,
)
async def model_statistics(name: str, state: StateDep, version: str | None = None) -> dict[str, Any]:
    """Every loaded version's statistics: requests that succeeded and failed, queue and compute
    time, and the model runs by batch size (durations in nanoseconds)."""
    return metadata.model_statistics(state, name, version)


@model_routes(
    router,
    "/v2/models/{name}",
    versioned_name="model_version_metadata",
    versioned_description="One version of a model: name, versions, platform, inputs and outputs.",
    **_MODEL,
)
async def model_metadata(name: str, state: StateDep, version: str | None = None) -> dict[str, Any]:
    """A model's name, versions, platform, inputs and outputs (the latest version)."""
    return metadata.model_metadata(state, state.get_model(name, version))


@model_routes(
    router,
    "/v2/models/{name}/ready",
    versioned_name="model_version_ready",
    versioned_description="Whether one version of a model serves.",
    **_MODEL,
)
async def model_ready(name: str, state: StateDep, version: str | None = None) -> JSONResponse:
    """200 `{"name", "version", "ready": true}` when the model serves; 503 while draining."""
    model, ready = state.get_model(name, version), state.lifecycle.serving
    return JSONResponse(
        {"name": model.name, "version": model.version, "ready": ready}, status_code=200 if ready else 503
    )


@model_routes(
    router,
    "/v2/models/{name}/config",
    versioned_name="model_version_config",
    versioned_description="One version's configuration in Triton's shape.",
    **_MODEL,
)
async def model_config(name: str, state: StateDep, version: str | None = None) -> dict[str, Any]:
    """The model's configuration in Triton's shape (the model configuration extension)."""
    return metadata.triton_config(state, state.get_model(name, version))


@model_routes(
    router,
    "/v2/models/{name}/infer",
    methods=["POST"],
    versioned_name="infer_version",
    versioned_description="Classify the images of a v2 inference request with one version of the model.",
    responses=INFER_RESPONSES,
    openapi_extra={"requestBody": INFER_REQUEST_BODY},
)
async def infer(
    name: str,
    request: Request,
    header_length: Annotated[int | None, Header(alias=HEADER_LENGTH, ge=0)] = None,
    version: str | None = None,
) -> Response:
    """Classify the images of a v2 inference request (the latest version of the model)."""

    def parse(
        body: bytes, head: InferenceRequest, dataplane: DataPlane
    ) -> tuple[InferenceRequest, codec.InferRequest]:
        parsed = codec.parse_rest_request(body, header_length, dataplane.limits.max_images_per_request)
        return parsed.inference(head), parsed

    head = InferenceRequest((), name, version, protocol=V2Route.protocol, top_k_parameter="classification")
    result, parsed = await infer_body(request, head, parse)
    tensors = codec.build_outputs(result.classifications, parsed.outputs)
    content, json_length = codec.encode_rest_response(
        result.model_name, result.model_version, parsed.id, tensors
    )
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)})
