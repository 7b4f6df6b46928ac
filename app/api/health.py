"""Liveness and readiness probes (never behind an API key)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.errors import NOT_READY
from app.http.deps import StateDep
from app.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is alive and its event loop answers."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=HealthResponse, responses=NOT_READY)
async def readyz(state: StateDep) -> HealthResponse:
    """The models are loaded and warmed up (the default one has a version) and the server is not
    draining; 503 otherwise."""
    state.check_ready()
    return HealthResponse(status="ready")


# HEAD, as a load balancer's or uptime checker's cheap probe: the GET's status, no body. Not
# in the OpenAPI schema, as FastAPI lists no HEAD operations (README, API section).
@router.head("/healthz", include_in_schema=False)
async def healthz_head() -> Response:
    return Response()


@router.head("/readyz", include_in_schema=False)
async def readyz_head(state: StateDep) -> Response:
    state.check_ready()
    return Response()
