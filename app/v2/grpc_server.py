"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on its own port.

``grpc.aio`` runs on the app's own event loop (uvicorn's), started and stopped by the lifespan,
so a ModelInfer call reaches the same dataplane, and the same batches, as ``/predict`` and
``/v2`` requests (the servicer: ``app/v2/grpc_service.py``; the port's bounds and the
interceptor that reads messages within them: ``app/v2/grpc_bounds.py``). ``grpc.health.v1`` answers for
``""`` and the service's name (what a Kubernetes ``grpc`` probe asks). On SIGTERM the server
stops with HTTP: health turns NOT_SERVING, new calls are refused (GOAWAY: clients reconnect
elsewhere) and calls in flight finish within the drain timeout.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from app.state import AppState
from app.v2.grpc_bounds import BoundsInterceptor, MessageBudget, grpc_limits, server_options
from app.v2.grpc_service import SERVICE_NAME, add_servicer

logger = logging.getLogger(__name__)


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
            # grpc_max_concurrent_rpcs is the interceptor's (not grpcio's maximum_concurrent_rpcs,
            # whose refusals no interceptor sees): every refused call logs its line.
            interceptors=[BoundsInterceptor(limits, budget, settings.api_keys, self.state.metrics)],
        )
        add_servicer(server, self.state, self.server_version)
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
