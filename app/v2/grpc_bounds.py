"""Bounds on the gRPC port: what connections, streams and messages may hold, and the API key
checked before a message is read.

grpc core (``grpc.aio``) reads a unary call's whole request message before it calls the
handler, and grows the stream's flow-control window to the message's declared length to do
so: 32 streams that announce 20 MiB and stall one byte short hold 640 MB, before any key or
budget is looked at. Two things here change that:

- :func:`server_options`: the core's own bounds (streams per connection, calls in progress,
  connections, idle and age limits, the handshake timeout);
- :class:`BoundsInterceptor`: it sees each call's metadata before a byte of its message is
  read (interceptors run when the call's headers arrive), refuses a call past the process's
  cap on calls in progress (:class:`CallLimit`) or without a valid API key there, with the
  access-log line every call gets, and serves every call that has a request message as a
  request-streaming one, so that the message is read only once room for it is held in the
  process's body budget (``max_buffered_body_bytes``, shared with HTTP bodies; gRPC may take
  half of it). A unary client sees no difference: on the wire a unary request is a stream of
  one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from pydantic import SecretStr

from app.body_budget import BodyBudget
from app.config import Settings
from app.inference.errors import UnauthenticatedError
from app.metrics import Metrics
from app.security import ApiKeys
from app.v2.grpc_calls import Metadata, call_request_id, invocation_metadata, metadata_text, record_call

logger = logging.getLogger(__name__)

# Above the HTTP body limit by the protobuf framing a request of that many bytes can carry.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
# gRPC messages being read may hold at most this share of max_buffered_body_bytes: the rest
# stays for HTTP bodies, whatever the gRPC clients do.
GRPC_BUDGET_SHARE = 0.5
# Messages one connection may be reading at once; the others of its calls wait their turn.
# With 20-MiB messages, half of the 256-MiB budget reads 6 at once: one client stalling its
# messages leaves 2 to the others. (2 a connection cost 20-40% of 32 concurrent small calls
# on one channel.)
READS_PER_CONNECTION = 4
_BUDGET_POLL_S = 0.01
# Calls that need no key: the probes (a kubelet's grpc probe sends none).
PUBLIC_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    }
)
# Probes are not counted against grpc_max_concurrent_rpcs: a cap full of inference calls must
# not make a kubelet restart a pod that is serving (the HTTP connection cap lets probes pass too).
PROBE_METHODS = PUBLIC_METHODS - {"/grpc.health.v1.Health/Watch"}


@dataclass(frozen=True)
class GrpcLimits:
    """The gRPC port's bounds (``Settings``' ``grpc_*`` fields)."""

    max_message_bytes: int
    max_concurrent_streams: int
    max_concurrent_rpcs: int
    max_connections: int
    connection_idle_s: float
    connection_age_s: float
    connection_age_grace_s: float
    handshake_timeout_s: float
    read_timeout_s: float


def grpc_limits(settings: Settings) -> GrpcLimits:
    return GrpcLimits(
        max_message_bytes=settings.max_upload_bytes + MESSAGE_OVERHEAD_BYTES,
        max_concurrent_streams=settings.grpc_max_concurrent_streams,
        max_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        max_connections=settings.grpc_max_connections,
        connection_idle_s=settings.grpc_connection_idle_s,
        connection_age_s=settings.grpc_connection_age_s,
        connection_age_grace_s=settings.grpc_connection_age_grace_s,
        handshake_timeout_s=settings.header_timeout_s,
        read_timeout_s=settings.request_timeout_s,
    )


def server_options(limits: GrpcLimits) -> list[tuple[str, int]]:
    """``grpc.aio.server(options=...)``: grpc core's channel arguments for these bounds."""

    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    return [
        # A second process on the port must fail to start, not share it silently.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.max_connection_idle_ms", ms(limits.connection_idle_s)),
        ("grpc.max_connection_age_ms", ms(limits.connection_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(limits.connection_age_grace_s)),
        ("grpc.server_handshake_timeout_ms", ms(limits.handshake_timeout_s)),
        # Off: BDP probing grows the window grpc core announces for every stream, read or not,
        # to a message's size (32 unread streams took in 640 MB); without it a stream's window
        # grows only while its message is being read, which the budget below bounds.
        ("grpc.http2.bdp_probe", 0),
    ]


class MessageBudget:
    """Room for gRPC request messages in the process's :class:`BodyBudget`: a message being
    read holds the most it may be (its length is known only once it has been read), then
    what it really is, until its call ends. One connection reads at most
    ``reads_per_connection`` messages at once, so that one client stalling its messages
    cannot take all the room."""

    def __init__(
        self,
        bodies: BodyBudget,
        share: float = GRPC_BUDGET_SHARE,
        reads_per_connection: int = READS_PER_CONNECTION,
    ) -> None:
        self.bodies = bodies
        self.max_bytes = int(bodies.max_bytes * share)
        self.reads_per_connection = reads_per_connection
        self.held_bytes = 0
        self._reading: dict[str, int] = {}  # peer (one per connection) -> messages being read
        self._released = asyncio.Event()

    def try_hold(self, count: int) -> bool:
        fits = (
            self.held_bytes + count <= self.max_bytes
            and self.bodies.held_bytes + count <= self.bodies.max_bytes
        )
        if fits:
            self.bodies.hold(count)  # fits: cannot raise
            self.held_bytes += count
        return fits

    async def start_read(self, peer: str, count: int, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a read slot of ``peer`` and room for ``count`` bytes."""
        deadline = time.monotonic() + timeout_s
        while self._reading.get(peer, 0) >= self.reads_per_connection or not self.try_hold(count):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._released.clear()
            # gRPC releases wake the waiters; HTTP bodies' releases are seen by the poll.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, _BUDGET_POLL_S)):
                    await self._released.wait()
        self._reading[peer] = self._reading.get(peer, 0) + 1
        return True

    def end_read(self, peer: str) -> None:
        left = self._reading.pop(peer, 1) - 1
        if left > 0:
            self._reading[peer] = left
        self._released.set()

    def release(self, count: int) -> None:
        self.held_bytes -= count
        self.bodies.release(count)
        self._released.set()


class CallLimit:
    """``grpc_max_concurrent_rpcs``: calls in progress across the process.

    Counted here, not by grpcio's ``maximum_concurrent_rpcs``: grpcio refuses a call past its
    cap before any interceptor runs, so the refusal would have no access-log line and no
    metric. Like grpcio's own limiter, a call counts from when its handler is looked up until
    the task that serves it ends (a done callback: nothing a handler does can leave it
    counted), and a refused call costs no read of its message.
    """

    def __init__(self, max_calls: int) -> None:
        self.max_calls = max_calls
        self.in_progress = 0

    def try_admit(self) -> bool:
        """Count the call the running task serves, unless the cap is reached."""
        if self.in_progress >= self.max_calls:
            return False
        task = asyncio.current_task()
        if task is not None:  # grpc.aio serves every call in a task of its own
            self.in_progress += 1
            task.add_done_callback(self._ended)
        return True

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self.in_progress -= 1


Behavior = Callable[..., Any]


class BoundsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc,unused-ignore]
    """The cap on calls in progress, the API key from the call's metadata (the one check of the
    port's keys), then its request message read within the budget."""

    def __init__(
        self, limits: GrpcLimits, budget: MessageBudget, keys: Sequence[SecretStr], metrics: Metrics
    ) -> None:
        self.limits = limits
        self.budget = budget
        self.calls = CallLimit(limits.max_concurrent_rpcs)
        self._keys = ApiKeys(keys)
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method not in PROBE_METHODS and not self.calls.try_admit():
            message = (
                f"overloaded: {self.calls.in_progress} gRPC calls are in progress, the most this server "
                "takes at once (grpc_max_concurrent_rpcs); retry"
            )
            return self._refusing(method, handler, grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        if handler.request_streaming:
            return handler
        if self._keys.enabled and method not in PUBLIC_METHODS:
            refusal = self._key_refusal(dict(handler_call_details.invocation_metadata or ()))
            if refusal is not None:
                return self._refusing(method, handler, grpc.StatusCode.UNAUTHENTICATED, refusal)
        return self._reading_within_budget(method, handler)

    def _key_refusal(self, metadata: Metadata) -> str | None:
        """Why the call's key is refused (``app.security``'s check and words), or None."""
        try:
            self._keys.check(metadata_text(metadata, "authorization"), metadata_text(metadata, "x-api-key"))
        except UnauthenticatedError as exc:
            return exc.message
        return None

    def _refusing(
        self, method: str, handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
    ) -> grpc.RpcMethodHandler:
        """A handler that answers ``code`` without reading the request message, with the access
        log line and request metrics the service gives every call."""
        start = time.perf_counter()

        async def refuse(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
            await self.answer(method, start, context, code, message)

        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                refuse, handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_unary_rpc_method_handler(
            refuse, handler.request_deserializer, handler.response_serializer
        )

    async def answer(
        self,
        method: str,
        start: float,
        context: grpc.aio.ServicerContext,
        code: grpc.StatusCode,
        message: str,
    ) -> None:
        """End a call the service never saw with ``code``, with the access-log line and request
        metrics the service gives every call."""
        request_id = call_request_id(invocation_metadata(context))
        seconds = time.perf_counter() - start
        record_call(self._metrics, method, request_id, code.name, 0, seconds, context.peer())
        await context.abort(code, message)

    def _reading_within_budget(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        def read(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> _HeldMessage:
            return _HeldMessage(self, method, requests, context)

        if handler.response_streaming:

            async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                async with read(requests, context) as request:
                    async for response in handler.unary_stream(request, context):
                        yield response

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            async with read(requests, context) as request:
                return await handler.unary_unary(request, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )


class _HeldMessage:
    """``async with``: hold room for the largest message, read it, then hold what it is."""

    def __init__(
        self,
        interceptor: BoundsInterceptor,
        method: str,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.interceptor = interceptor
        self.method = method
        self.start = time.perf_counter()
        self.budget = interceptor.budget
        self.limits = interceptor.limits
        self.requests = requests
        self.context = context
        self.held = 0

    def _time_left(self) -> float:
        remaining = self.context.time_remaining()
        limit = self.limits.read_timeout_s
        return limit if remaining is None else max(0.0, min(limit, remaining))

    async def __aenter__(self) -> Any:
        largest = self.limits.max_message_bytes
        peer = self.context.peer()
        if not await self.budget.start_read(peer, largest, self._time_left()):
            await self._answer(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"overloaded: no room to read the request message before its deadline (gRPC messages "
                f"being read hold {self.budget.held_bytes} of the {self.budget.max_bytes} bytes they may, "
                f"half of max_buffered_body_bytes, at most {self.budget.reads_per_connection} a connection); "
                "retry",
            )
        self.held = largest
        try:
            async with asyncio.timeout(self._time_left()):
                request = await anext(self.requests)
        except StopAsyncIteration:
            self._release()
            await self._answer(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message")
        except TimeoutError:
            self._release()
            await self._answer(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the request message did not arrive within the deadline"
            )
        except BaseException:
            self._release()
            raise
        finally:
            self.budget.end_read(peer)
        # The service may take the raw bytes (it parses them itself) or the parsed message.
        size = len(request) if isinstance(request, bytes) else request.ByteSize()
        self.budget.release(largest - size)
        self.held = size
        return request

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        self.budget.release(self.held)
        self.held = 0

    async def _answer(self, code: grpc.StatusCode, message: str) -> None:
        await self.interceptor.answer(self.method, self.start, self.context, code, message)
