"""The Open Inference Protocol ("KServe v2", Triton's HTTP protocol) over REST: ``/v2/...``.

A thin front end: it reads the body with the same byte limit as ``/predict`` (gzip and deflate
bodies too), parses it with :mod:`app.v2.codec` on the parse thread, hands the images to the
dataplane (the same batches as ``/predict``'s, the same deadline), and renders the answer and
the errors (``V2_HTTP_STATUS``) with the protocol's ``{"error": message}`` body.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from app.dataplane import InferenceRequest
from app.http.body import read_body
from app.http.deps import StateDep
from app.http.disconnect import client_gone
from app.http.errors import ErrorBodyRoute
from app.inference.model import NamedImage, ServedModel
from app.middleware import get_request_context
from app.state import AppState
from app.v2 import codec, metadata
from app.v2.errors import V2_HTTP_STATUS
from app.v2.openapi import INFER_REQUEST_BODY, INFER_RESPONSES, MODEL_RESPONSES

HEADER_LENGTH = "Inference-Header-Content-Length"


class V2Route(ErrorBodyRoute):
    protocol = "v2_http"
    status_table = V2_HTTP_STATUS


TAGS: list[str | Any] = ["Open Inference Protocol (v2)"]
router = APIRouter(route_class=V2Route, tags=TAGS)
# Probes, like /healthz and /readyz, never need an API key.
health_router = APIRouter(route_class=V2Route, tags=TAGS)


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
    dataplane = state.get_dataplane()

    async def read() -> tuple[InferenceRequest, codec.InferRequest]:
        body = await read_body(request, dataplane.limits.max_upload_bytes)
        limit = dataplane.limits.max_images_per_request
        parsed = await dataplane.parse(codec.parse_rest_request, body, header_length, limit)
        images = [NamedImage(f"{codec.INPUT_NAME}[{i}]", data) for i, data in enumerate(parsed.images)]
        inference = InferenceRequest(
            images,
            name,
            version,
            parsed.top_k,
            parsed.explain,
            V2Route.protocol,
            "classification",
            parsed.pixels,
        )
        return inference, parsed

    result, parsed = await dataplane.run(
        name, version, read, record=get_request_context(request.scope), gone=client_gone(request)
    )
    tensors = codec.build_outputs(result.classifications, parsed.outputs)
    content, json_length = codec.encode_rest_response(
        result.model_name, result.model_version, parsed.id, tensors
    )
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)})
