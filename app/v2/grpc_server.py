"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on its own port.

``grpc.aio`` runs on the app's own event loop (uvicorn's), started and stopped by the lifespan,
so a ModelInfer call reaches the same ``ServedModel.classify``, and the same batches, as
``/predict`` and ``/v2`` requests. It applies what the HTTP side applies: the API keys
(``authorization: Bearer KEY`` or ``x-api-key`` metadata), the byte limit (as
``max_receive_message_length``), the image limits, the request deadline, one access-log line
and the request and image metrics per call. The core's errors map to gRPC codes here, in
:data:`GRPC_CODE`. ``grpc.health.v1`` answers for ``""`` and the service's name (what a
Kubernetes ``grpc`` probe asks). On SIGTERM the server stops with HTTP: health turns
NOT_SERVING, new calls are refused (GOAWAY: clients reconnect elsewhere) and calls in flight
finish within the drain timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from app.inference.deadline import request_deadline
from app.inference.errors import (
    DeadlineExceededError,
    ImageError,
    InferenceError,
    InvalidRequestError,
    ModelFailedError,
    ModelNotFoundError,
    RequestTooLargeError,
    UnavailableError,
)
from app.inference.model import NamedImage, ServedModel
from app.middleware import request_id_or_new
from app.security import key_matches
from app.state import AppState
from app.v2 import codec, metadata
from app.v2.grpc_bounds import BoundsInterceptor, MessageBudget, grpc_limits, server_options
from app.v2.proto import grpc_predict_v2_pb2 as pb
from app.v2.proto import grpc_predict_v2_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("app.access")

SERVICE_NAME = "inference.GRPCInferenceService"
PROTOCOL = "v2_grpc"
# Above the HTTP body limit by the protobuf framing a request of that many bytes can carry.
_MESSAGE_OVERHEAD_BYTES = 64 * 1024

# The core's errors as gRPC codes; the most specific class listed wins.
GRPC_CODE: dict[type[InferenceError], grpc.StatusCode] = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    ImageError: grpc.StatusCode.INVALID_ARGUMENT,
    RequestTooLargeError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelFailedError: grpc.StatusCode.INTERNAL,
}

T = TypeVar("T")


def grpc_code(error: InferenceError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in GRPC_CODE:
            return GRPC_CODE[cls]
    return grpc.StatusCode.INTERNAL


class RpcError(Exception):
    """A call this front end refuses itself (a malformed request, a missing API key)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Call:
    request_id: str
    images: int = 0


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc,unused-ignore]
    """The six RPCs of the v2 protocol's required API, over the app's state."""

    def __init__(self, state: AppState, server_version: str) -> None:
        self.state = state
        self.server_version = server_version
        self._keys = [key.get_secret_value().encode() for key in state.settings.api_keys]

    # -- health and metadata ----------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return await self._serve(
            "ServerLive", context, lambda call: _done(pb.ServerLiveResponse(live=True)), False
        )

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        ready = self.state.lifecycle.serving
        return await self._serve(
            "ServerReady", context, lambda call: _done(pb.ServerReadyResponse(ready=ready)), False
        )

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        async def ready(call: _Call) -> pb.ModelReadyResponse:
            self._model(request.name, request.version)
            return pb.ModelReadyResponse(ready=self.state.lifecycle.serving)

        return await self._serve("ModelReady", context, ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        body = metadata.server_metadata(self.server_version)
        return await self._serve(
            "ServerMetadata", context, lambda call: _done(pb.ServerMetadataResponse(**body))
        )

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        async def describe(call: _Call) -> pb.ModelMetadataResponse:
            model = self._model(request.name, request.version)
            return pb.ModelMetadataResponse(**metadata.model_metadata(self.state, model))

        return await self._serve("ModelMetadata", context, describe)

    # -- inference ------------------------------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        async def infer(call: _Call) -> pb.ModelInferResponse:
            return await self._infer(request, call)

        return await self._serve("ModelInfer", context, infer)

    async def _infer(self, request: pb.ModelInferRequest, call: _Call) -> pb.ModelInferResponse:
        model = self._model(request.model_name, request.model_version)
        settings = self.state.settings
        try:
            images = _images(request, settings.max_images_per_request)
            outputs = codec.parse_outputs(
                [(o.name, _parameters(o.parameters)) for o in request.outputs], binary_default=True
            )
        except codec.CodecError as exc:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, exc.message) from exc
        top_k = _top_k(model, codec.InferRequest(images, outputs).top_k)
        call.images = len(images)
        named = [NamedImage(f"{codec.INPUT_NAME}[{i}]", data) for i, data in enumerate(images)]
        async with request_deadline(settings.request_timeout_s):
            results = await model.classify(named, top_k)
        self.state.metrics.count_images(PROTOCOL, len(results))
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        # tritonclient reads only raw_output_contents, so every output travels raw.
        for tensor in codec.build_outputs(results, outputs):
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(tensor.raw())
        return response

    def _model(self, name: str, version: str) -> ServedModel:
        return self.state.get_model(name, version or None)

    # -- every call: API key, errors as codes, metrics and the access log ------------------------------
    async def _serve(
        self, method: str, context: Any, work: Callable[[_Call], Awaitable[T]], protected: bool = True
    ) -> T:
        start = time.perf_counter()
        invocation = dict(context.invocation_metadata() or ())
        call = _Call(request_id=request_id_or_new(_as_bytes(invocation.get("x-request-id"))))
        failure: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None
        try:
            if protected and self._keys:
                self._authorize(invocation)
            result = await work(call)
        except RpcError as exc:
            failure = (exc.code, exc.message, ())
        except InferenceError as exc:
            retry = (("retry-after", str(exc.retry_after_s)),) if isinstance(exc, UnavailableError) else ()
            failure = (grpc_code(exc), exc.message, retry)
        except asyncio.CancelledError:  # the client left or its deadline passed: its images are dropped
            self._record(method, call, "CANCELLED", start, context)
            raise
        except Exception:
            logger.exception("gRPC %s failed", method)
            failure = (grpc.StatusCode.INTERNAL, "internal server error", ())
        trailers = (("x-request-id", call.request_id),)
        self._record(method, call, failure[0].name if failure else "OK", start, context)
        if failure is not None:
            await context.abort(failure[0], failure[1], trailing_metadata=trailers + failure[2])
        context.set_trailing_metadata(trailers)
        return result

    def _authorize(self, invocation: Mapping[str, Any]) -> None:
        bearer = str(invocation.get("authorization", ""))
        candidates = [c for c in (invocation.get("x-api-key"), bearer.removeprefix("Bearer ").strip()) if c]
        if not candidates:
            raise RpcError(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing API key: send metadata 'authorization: Bearer KEY' or 'x-api-key: KEY'",
            )
        if not any([key_matches(str(candidate), self._keys) for candidate in candidates]):
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, "invalid API key")

    def _record(self, method: str, call: _Call, code: str, start: float, context: Any) -> None:
        seconds = time.perf_counter() - start
        route = f"/{SERVICE_NAME}/{method}"
        self.state.metrics.observe_request(route, "POST", code, PROTOCOL, seconds)
        access_logger.info(
            "request",
            extra={
                "request_id": call.request_id,
                "method": "POST",
                "path": route,
                "route": route,
                "protocol": PROTOCOL,
                "status": code,
                "images": call.images,
                "latency_ms": round(seconds * 1000, 3),
                "client": context.peer(),
            },
        )


async def _done(value: T) -> T:
    return value


def _as_bytes(value: object) -> bytes | None:
    if isinstance(value, bytes):
        return value
    return value.encode("latin-1", "replace") if isinstance(value, str) else None


def _parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, object]:
    values: dict[str, object] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def _images(request: pb.ModelInferRequest, max_images: int) -> list[bytes]:
    """The encoded images of the one input, from ``raw_input_contents`` or ``bytes_contents``."""
    if len(request.inputs) != 1:
        raise codec.CodecError(
            f"send exactly one input, {codec.INPUT_NAME!r} (BYTES [N, 1]); got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    codec.check_input(tensor.name, tensor.datatype)
    count = codec.batch_size(list(tensor.shape), max_images)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise codec.CodecError(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input"
            )
        return codec.decode_bytes_elements(request.raw_input_contents[0], count)
    elements = list(tensor.contents.bytes_contents)
    if len(elements) != count:
        raise codec.CodecError(
            f"input {codec.INPUT_NAME!r}: shape declares {count} element(s), contents.bytes_contents "
            f"holds {len(elements)}"
        )
    return elements


def _top_k(model: ServedModel, requested: int | None) -> int:
    if requested is None:
        return model.default_top_k
    if requested > model.max_top_k:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"classification must be between {model.top_k_range()}, got {requested}",
        )
    return requested


class GrpcServer:
    """The gRPC server of one app: ``start`` in the lifespan, ``stop`` (or the drain hook) at exit."""

    def __init__(self, state: AppState, server_version: str) -> None:
        self.state = state
        self.server_version = server_version
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._stopping: asyncio.Future[None] | None = None

    async def start(self) -> None:
        settings = self.state.settings
        limits = grpc_limits(settings)
        budget = MessageBudget(self.state.body_budget)
        server = grpc.aio.server(
            options=server_options(limits),
            interceptors=[BoundsInterceptor(limits, budget, settings.api_keys, self._count_refusal)],
            maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.state, self.server_version), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{_host(settings.host)}:{settings.grpc_port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot serve gRPC on {address} (IMGSERVE_GRPC_PORT): {exc}") from exc
        await server.start()
        self._server = server
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        logger.info("gRPC serving", extra={"address": address, "service": SERVICE_NAME})

    def _count_refusal(self, method: str, code: str, seconds: float) -> None:
        self.state.metrics.observe_request(method, "POST", code, PROTOCOL, seconds)

    def begin_stop(self) -> None:
        """Refuse new calls now, let the ones in flight finish within the rest of the drain."""
        if self._stopping is None and self._server is not None:
            grace_s = max(0.5, self.state.lifecycle.seconds_left(self.state.settings.drain_timeout_s) - 1.0)
            self._stopping = asyncio.ensure_future(self._stop(self._server, grace_s))

    async def stop(self) -> None:
        self.begin_stop()
        if self._stopping is not None:
            await self._stopping

    async def _stop(self, server: grpc.aio.Server, grace_s: float) -> None:
        await self._health.enter_graceful_shutdown()
        await server.stop(grace_s)
        logger.info("gRPC stopped")


def _host(host: str) -> str:
    """An IPv6 address in brackets, as gRPC's address syntax wants it."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def start_grpc_server(state: AppState, server_version: str) -> GrpcServer:
    """Start gRPC on ``settings.grpc_port`` and stop it when the server starts draining."""
    server = GrpcServer(state, server_version)
    await server.start()
    state.lifecycle.drain_hooks.append(server.begin_stop)
    return server
