"""Triton's model repository extension: index, load and unload, with Triton's shapes.

Registered only with ``IMGSERVE_MODEL_CONTROL=explicit`` (and behind the API key when keys are
set). Errors are Triton's ``{"error": "..."}``, 400 for a request that cannot be carried out and
503 while the server starts or drains. A load returns once the new versions serve (or failed:
the serving ones are untouched); an unload once the retired versions have drained.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.http.deps import StateDep
from app.inference.control import LoadError, ModelControl
from app.inference.registry import VersionStatus
from app.inference.repository import RepositoryError, VersionPolicy, parse_triton_config
from app.state import AppState

router = APIRouter(tags=["model repository"])

MAX_BODY_BYTES = 64 * 1024


class RepositoryIndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ready: bool = Field(default=False, description="true: only the versions ready for inference.")


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str | None = Field(default=None, description="Absent for a model that is not loaded.")
    state: str = Field(examples=["READY"], description="LOADING, READY, UNLOADING or UNAVAILABLE.")
    reason: str = Field(description="Why it is in that state (a failed load's error); else empty.")


class LoadParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str | None = Field(
        default=None,
        description=(
            'A Triton model config in JSON with only a version_policy, e.g. {"version_policy": '
            '{"specific": {"versions": [1]}}}; it replaces the model\'s config.toml until a load without it.'
        ),
    )


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parameters: LoadParameters = Field(default_factory=LoadParameters)


class UnloadParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unload_dependents: bool = Field(default=False, description="Accepted; no model here has dependents.")


class UnloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parameters: UnloadParameters = Field(default_factory=UnloadParameters)


class RepositoryErrorBody(BaseModel):
    error: str = Field(
        examples=[
            "cannot load model 'digits' version 3 (...): the graph has 10 classes but the card has 11 labels"
        ]
    )


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": RepositoryErrorBody,
        "description": "Malformed request, unknown model, or the load failed.",
    },
    503: {"model": RepositoryErrorBody, "description": "The server is starting or shutting down."},
}
ModelName = Annotated[str, Path(description="A model folder's name in the repository.")]


@router.post(
    "/v2/repository/index",
    response_model=list[RepositoryIndexEntry],
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_body(RepositoryIndexRequest),
)
async def repository_index(request: Request, state: StateDep) -> Any:
    """Every model in the repository and every version known, with its state and the reason."""
    try:
        control = _control(state)
        body = RepositoryIndexRequest.model_validate(await _read_json(request))
    except _RequestError as exc:
        return exc.response()
    except ValidationError as exc:
        return _error(400, f"invalid index request: {_first_error(exc)}")
    return [_entry(status) for status in control.index(ready_only=body.ready)]


@router.post("/v2/repository/models/{name}/load", responses=_ERRORS, openapi_extra=_body(LoadRequest))
async def load_model(name: ModelName, request: Request, state: StateDep) -> Response:
    """Load the model, or reload it: serve the versions its policy picks now, retire the others."""
    try:
        control = _control(state)
        body = LoadRequest.model_validate(await _read_json(request))
        policy = _policy(name, body.parameters.config)
        await control.load(name, policy)
    except _RequestError as exc:
        return exc.response()
    except ValidationError as exc:
        return _error(400, f"invalid load request: {_first_error(exc)}")
    except LoadError as exc:
        return _error(400, f"failed to load {name!r}: {exc}")
    return Response(status_code=200)


@router.post("/v2/repository/models/{name}/unload", responses=_ERRORS, openapi_extra=_body(UnloadRequest))
async def unload_model(name: ModelName, request: Request, state: StateDep) -> Response:
    """Unload every version of the model; returns once their requests have finished."""
    try:
        control = _control(state)
        UnloadRequest.model_validate(await _read_json(request))
        await control.unload(name)
    except _RequestError as exc:
        return exc.response()
    except ValidationError as exc:
        return _error(400, f"invalid unload request: {_first_error(exc)}")
    except LoadError as exc:
        return _error(400, f"failed to unload {name!r}: {exc}")
    return Response(status_code=200)


class _RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> JSONResponse:
        return _error(self.status, self.message)


def _error(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _control(state: AppState) -> ModelControl:
    if state.lifecycle.draining:
        raise _RequestError(503, "not ready: draining, the server is shutting down")
    if state.control is None or not state.lifecycle.ready:
        raise _RequestError(503, "not ready: the models are loading")
    return state.control


async def _read_json(request: Request) -> Any:
    """The body as JSON, ``{}`` when empty (Triton's clients send none); at most 64 KiB."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _RequestError(400, f"the request body exceeds {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except RecursionError:  # 64 KiB of '[' is deeper than the parser's recursion limit
        raise _RequestError(400, "the request body nests JSON arrays or objects too deeply") from None
    except ValueError as exc:
        raise _RequestError(400, f"the request body is not JSON: {exc}") from exc


def _policy(name: str, config: str | None) -> VersionPolicy | None:
    if config is None:
        return None
    try:
        return parse_triton_config(config, f"the config parameter of the load of {name!r}")
    except RepositoryError as exc:
        raise _RequestError(400, str(exc)) from exc


def _entry(status: VersionStatus) -> RepositoryIndexEntry:
    return RepositoryIndexEntry(
        name=status.name, version=status.version, state=status.state.value, reason=status.reason
    )


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "body"
    return f"{where}: {error['msg']} (got {error.get('input')!r})"
