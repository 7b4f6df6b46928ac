"""``inference.GRPCInferenceService``: the v2 protocol's gRPC front end over the dataplane.

Every method takes its request as bytes (the identity deserializer) and parses it itself, once
the port's interceptor has checked the API key (``app/v2/grpc_bounds.py``): a malformed
message is INVALID_ARGUMENT with its access-log line, never an exception inside grpc, and
ModelInfer's message is parsed on the parse thread, off the event loop, its fields counted from
the wire first (``app/v2/wire.py``). Every call gets one access-log line and the request
metrics (``app/v2/grpc_calls.py``); the protocol-free errors map to codes in
:data:`app.v2.errors.GRPC_CODE`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from app.dataplane import InferenceRequest
from app.inference.errors import InferenceError, MalformedRequestError, UnavailableError, most_specific
from app.state import AppState
from app.v2 import codec, grpc_triton, metadata
from app.v2 import pixels as pixel_tensor
from app.v2.errors import GRPC_CODE
from app.v2.grpc_calls import PROTOCOL, call_request_id, invocation_metadata, record_call
from app.v2.proto import grpc_service_pb2 as pb
from app.v2.wire import check_field_count

logger = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name

M = TypeVar("M", bound=Message)
Work = Callable[[Any, "_Call"], Awaitable[Message]]


@dataclass
class _Call:
    request_id: str
    images: int = 0


class InferenceServicer:
    """The v2 protocol's required RPCs and Triton's extensions, over the app's state and dataplane."""

    def __init__(self, state: AppState, server_version: str) -> None:
        self.state = state
        self.server_version = server_version

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Each RPC's handler; its request and response types are the proto's."""
        methods: dict[str, Work] = {
            "ServerLive": self._live,
            "ServerReady": self._ready,
            "ModelReady": self._model_ready,
            "ServerMetadata": self._server_metadata,
            "ModelMetadata": self._model_metadata,
            "ModelInfer": self._infer,
            **{name: partial(self._extension, work) for name, work in grpc_triton.MODEL_RPCS.items()},
        }
        # Without explicit model control the repository's are not served (UNIMPLEMENTED), as
        # their HTTP routes are not.
        if self.state.settings.model_control == "explicit":
            methods |= {
                name: partial(self._extension, work) for name, work in grpc_triton.REPOSITORY_RPCS.items()
            }
        return {
            name: grpc.unary_unary_rpc_method_handler(
                self._method(name, work), response_serializer=lambda response: response.SerializeToString()
            )
            for name, work in methods.items()
        }

    # -- the methods ----------------------------------------------------------------------------------
    async def _live(self, request: pb.ServerLiveRequest, call: _Call) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def _ready(self, request: pb.ServerReadyRequest, call: _Call) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.state.lifecycle.serving)

    async def _model_ready(self, request: pb.ModelReadyRequest, call: _Call) -> pb.ModelReadyResponse:
        self.state.get_model(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=self.state.lifecycle.serving)

    async def _server_metadata(
        self, request: pb.ServerMetadataRequest, call: _Call
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**metadata.server_metadata(self.server_version))

    async def _model_metadata(
        self, request: pb.ModelMetadataRequest, call: _Call
    ) -> pb.ModelMetadataResponse:
        model = self.state.get_model(request.name, request.version or None)
        return pb.ModelMetadataResponse(**metadata.model_metadata(self.state, model, parameters=False))

    async def _extension(self, work: grpc_triton.Extension, request: Message, call: _Call) -> Message:
        return await work(self.state, request)

    async def _infer(self, raw: bytes, call: _Call) -> pb.ModelInferResponse:
        dataplane = self.state.get_dataplane()
        async with dataplane.deadline():
            limit = dataplane.limits.max_images_per_request
            request = await dataplane.parse(_parse_infer_request, raw, limit)
            head = InferenceRequest((), request.model_name, request.model_version or None, protocol=PROTOCOL)
            dataplane.model(head.model_name, head.model_version)  # 404 before the input
            parsed = _inputs(request, limit)
            result = await dataplane.infer(parsed.inference(head), record=call)
        response = pb.ModelInferResponse(
            model_name=result.model_name, model_version=result.model_version, id=request.id
        )
        # tritonclient reads only raw_output_contents, so every output travels raw.
        for tensor in codec.build_outputs(result.classifications, parsed.outputs):
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(tensor.raw())
        return response

    # -- every call: parsing, errors as codes, metrics and the access log ------------------------------
    def _method(self, name: str, work: Work) -> Callable[[bytes, Any], Awaitable[Message]]:
        if work == self._infer:  # parsed by the work itself, off the event loop
            return partial(self._serve, name, work)
        request_type = getattr(pb, SERVICE.methods_by_name[name].input_type.name)
        return partial(self._serve, name, lambda raw, call: work(_parse(request_type, raw), call))

    async def _serve(self, name: str, work: Work, raw: bytes, context: Any) -> Message:
        start = time.perf_counter()
        call = _Call(request_id=call_request_id(invocation_metadata(context)))
        failure: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None
        try:
            result = await work(raw, call)
        except InferenceError as exc:
            retry = (("retry-after", str(exc.retry_after_s)),) if isinstance(exc, UnavailableError) else ()
            failure = (most_specific(exc, GRPC_CODE, grpc.StatusCode.INTERNAL), exc.message, retry)
        except asyncio.CancelledError:  # the client left or its deadline passed: its images are dropped
            self._record(name, call, "CANCELLED", start, context)
            raise
        except Exception:
            logger.exception("gRPC %s failed", name)
            failure = (grpc.StatusCode.INTERNAL, "internal server error", ())
        trailers = (("x-request-id", call.request_id),)
        self._record(name, call, failure[0].name if failure else "OK", start, context)
        if failure is not None:
            await context.abort(failure[0], failure[1], trailing_metadata=trailers + failure[2])
        context.set_trailing_metadata(trailers)
        return result

    def _record(self, name: str, call: _Call, code: str, start: float, context: Any) -> None:
        seconds = time.perf_counter() - start
        method = f"/{SERVICE_NAME}/{name}"
        record_call(self.state.metrics, method, call.request_id, code, call.images, seconds, context.peer())


def add_servicer(server: grpc.aio.Server, state: AppState, server_version: str) -> None:
    handlers = InferenceServicer(state, server_version).handlers()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def _parse(request_type: type[M], raw: bytes) -> M:
    try:
        return request_type.FromString(raw)  # type: ignore[no-any-return]
    except (DecodeError, RecursionError) as exc:
        raise MalformedRequestError(
            f"not a valid {request_type.DESCRIPTOR.full_name} message: {exc}"
        ) from None


def _parse_infer_request(raw: bytes, max_images: int) -> pb.ModelInferRequest:
    """On the parse thread: the fields counted from the wire first (one per image, a few for
    names and parameters), so a message of millions of tiny fields is refused before protobuf
    builds them."""
    check_field_count(raw, pb.ModelInferRequest.DESCRIPTOR, max_fields=1024 + 16 * max_images)
    return _parse(pb.ModelInferRequest, raw)


def _parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, object]:
    values: dict[str, object] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def _inputs(request: pb.ModelInferRequest, max_images: int) -> codec.InferRequest:
    """The one input (encoded images, or pixels) and the outputs asked for."""
    pixels = _pixels(request, max_images)
    images = _images(request, max_images) if pixels is None else []
    explain = codec.explain_parameter(_parameters(request.parameters))
    outputs = codec.parse_outputs(
        [(o.name, _parameters(o.parameters)) for o in request.outputs], binary_default=True, explain=explain
    )
    return codec.InferRequest(images, outputs, pixels=pixels)


def _raw_contents(request: pb.ModelInferRequest) -> bytes | None:
    """The one input's ``raw_input_contents``, if it travels there."""
    if not request.raw_input_contents:
        return None
    if len(request.raw_input_contents) != 1:
        raise codec.CodecError(
            f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input"
        )
    raw: bytes = request.raw_input_contents[0]
    return raw


def _pixels(request: pb.ModelInferRequest, max_images: int) -> np.ndarray | None:
    """The ``pixels`` input (``raw_input_contents`` or ``contents.uint_contents``), if that is
    the one input sent."""
    if len(request.inputs) != 1 or request.inputs[0].name != pixel_tensor.PIXELS_INPUT:
        return None
    tensor = request.inputs[0]
    shape = codec.pixels_input_shape(tensor.datatype, list(tensor.shape), max_images)
    try:
        raw = _raw_contents(request)
        if raw is not None:
            return pixel_tensor.pixels_from_bytes(raw, shape)
        return pixel_tensor.pixels_from_values(tensor.contents.uint_contents, shape)
    except pixel_tensor.PixelsError as exc:
        raise codec.CodecError(exc.message) from None


def _images(request: pb.ModelInferRequest, max_images: int) -> list[bytes]:
    """The encoded images of the one input, from ``raw_input_contents`` or ``bytes_contents``."""
    if len(request.inputs) != 1:
        raise codec.CodecError(
            f"send exactly one input, {codec.INPUT_NAME!r} (BYTES [N, 1]); got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    codec.check_input(tensor.name, tensor.datatype)
    count = codec.batch_size(list(tensor.shape), max_images)
    raw = _raw_contents(request)
    if raw is not None:
        return codec.decode_bytes_elements(raw, count)
    elements = list(tensor.contents.bytes_contents)
    if len(elements) != count:
        raise codec.CodecError(
            f"input {codec.INPUT_NAME!r}: shape declares {count} element(s), contents.bytes_contents "
            f"holds {len(elements)}"
        )
    return elements
