"""Triton's extension RPCs of ``inference.GRPCInferenceService``, beyond KServe's required six.

``ModelConfig`` and ``ModelStatistics`` answer what ``/v2/models/{name}[/versions/{v}]/config``
and ``.../stats`` answer over HTTP (the same dicts, from :mod:`app.v2.metadata`, as Triton's
messages). ``RepositoryIndex``, ``RepositoryModelLoad`` and ``RepositoryModelUnload`` are the
model repository extension, served only with explicit model control (``IMGSERVE_MODEL_CONTROL=
explicit``), as over HTTP: they call the same :class:`app.inference.control.ModelControl`.

Each function takes the parsed request and returns the response message, or raises one of the
core's errors, which the gRPC front end maps to a code like every other call's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from app.inference.control import LoadError, ModelControl
from app.inference.errors import InvalidRequestError, NotReadyError
from app.inference.repository import RepositoryError, VersionPolicy, parse_triton_config
from app.state import AppState
from app.v2 import metadata
from app.v2.proto import grpc_service_pb2 as pb
from app.v2.proto import model_config_pb2 as mc

Extension = Callable[[AppState, Any], Awaitable[Message]]


async def model_config(state: AppState, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
    model = state.get_model(request.name, request.version or None)
    config = json_format.ParseDict(metadata.triton_config(state, model), mc.ModelConfig())
    return pb.ModelConfigResponse(config=config)


async def model_statistics(state: AppState, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
    statistics = metadata.model_statistics(state, request.name or None, request.version or None)
    response = pb.ModelStatisticsResponse()
    json_format.ParseDict(statistics, response)
    return response


async def repository_index(state: AppState, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
    _check_repository(request.repository_name)
    response = pb.RepositoryIndexResponse()
    for status in _control(state).index(ready_only=request.ready):
        response.models.add(
            name=status.name, version=status.version or "", state=status.state.value, reason=status.reason
        )
    return response


async def repository_model_load(
    state: AppState, request: pb.RepositoryModelLoadRequest
) -> pb.RepositoryModelLoadResponse:
    _check_repository(request.repository_name)
    control = _control(state)
    policy = _load_policy(request.model_name, request.parameters)
    try:
        await control.load(request.model_name, policy)
    except LoadError as exc:
        raise InvalidRequestError(f"failed to load {request.model_name!r}: {exc}") from exc
    return pb.RepositoryModelLoadResponse()


async def repository_model_unload(
    state: AppState, request: pb.RepositoryModelUnloadRequest
) -> pb.RepositoryModelUnloadResponse:
    _check_repository(request.repository_name)
    control = _control(state)
    unknown = set(request.parameters) - {"unload_dependents"}  # accepted: no model has dependents
    if unknown:
        raise InvalidRequestError(
            f"unknown unload parameter(s) {sorted(unknown)}; the one accepted is 'unload_dependents'"
        )
    try:
        await control.unload(request.model_name)
    except LoadError as exc:
        raise InvalidRequestError(f"failed to unload {request.model_name!r}: {exc}") from exc
    return pb.RepositoryModelUnloadResponse()


def _check_repository(name: str) -> None:
    if name:
        raise InvalidRequestError(
            f"repository_name {name!r}: this server has one model repository; leave repository_name empty"
        )


def _control(state: AppState) -> ModelControl:
    if state.lifecycle.draining:
        raise NotReadyError("not ready: draining, the server is shutting down")
    if state.control is None or not state.lifecycle.ready:
        raise NotReadyError("not ready: the models are loading")
    return state.control


def _load_policy(name: str, parameters: Any) -> VersionPolicy | None:
    """The version policy of a load's ``config`` parameter (a Triton config in JSON), if any."""
    unknown = set(parameters) - {"config"}
    if unknown:
        raise InvalidRequestError(
            f"unsupported load parameter(s) {sorted(unknown)}: only 'config' (a JSON model config "
            f"with a version_policy) is accepted; model files are read from the repository"
        )
    if "config" not in parameters:
        return None
    parameter = parameters["config"]
    if parameter.WhichOneof("parameter_choice") != "string_param":
        raise InvalidRequestError("the load parameter 'config' must be a string_param holding JSON")
    try:
        return parse_triton_config(parameter.string_param, f"the config parameter of the load of {name!r}")
    except RepositoryError as exc:
        raise InvalidRequestError(str(exc)) from exc


# RPC name -> the work (its request and response types are the proto's): what the front end
# serves beside KServe's six; the repository's only with explicit model control.
MODEL_RPCS: dict[str, Extension] = {"ModelConfig": model_config, "ModelStatistics": model_statistics}
REPOSITORY_RPCS: dict[str, Extension] = {
    "RepositoryIndex": repository_index,
    "RepositoryModelLoad": repository_model_load,
    "RepositoryModelUnload": repository_model_unload,
}
